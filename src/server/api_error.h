// Errors of the HTTP API in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an
// HTTP status. ApiResult<T> is Result<T> for request handling: the error carries the status and the
// offending parameter so the client library raises the right exception (openai.BadRequestError...).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <variant>

namespace kiln {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty: null
  std::string code;   // empty: null
};

inline ApiError invalid_param(std::string param, std::string message) {
  return ApiError{400, std::move(message), "invalid_request_error", std::move(param), ""};
}

inline nlohmann::ordered_json error_json(const ApiError& e) {
  nlohmann::ordered_json error = {
      {"message", e.message},
      {"type", e.type},
      {"param", e.param.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(e.param)},
      {"code", e.code.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(e.code)}};
  return {{"error", std::move(error)}};
}

template <class T>
class [[nodiscard]] ApiResult {
 public:
  ApiResult(T value) : storage_(std::move(value)) {}         // NOLINT: implicit by design
  ApiResult(ApiError error) : storage_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(storage_); }
  T& value() & { return std::get<T>(storage_); }
  const T& value() const& { return std::get<T>(storage_); }
  T&& value() && { return std::get<T>(std::move(storage_)); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const ApiError& error() const { return std::get<ApiError>(storage_); }

 private:
  std::variant<T, ApiError> storage_;
};

}  // namespace kiln
