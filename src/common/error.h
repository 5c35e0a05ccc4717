// Errors as values. Every fallible function returns Result<T> (or Status);
// the Error carries one human-readable line with its context (file, tensor,
// offset, expected vs found), which the CLI prints as is.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace kiln {

struct Error {
  std::string message;  // one line: "<context>: <problem> (expected X, found Y)"

  // Prefixes context, e.g. err.with_context("reading config.json").
  Error with_context(const std::string& context) const { return Error{context + ": " + message}; }
};

template <class... Args>
Error make_error(fmt::format_string<Args...> format, Args&&... args) {
  return Error{fmt::format(format, std::forward<Args>(args)...)};
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : storage_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Error error) : storage_(std::move(error)) {}      // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(storage_); }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<T>(storage_); }
  const T& value() const& { assert(ok()); return std::get<T>(storage_); }
  T&& value() && { assert(ok()); return std::get<T>(std::move(storage_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { assert(!ok()); return std::get<Error>(storage_); }

 private:
  std::variant<T, Error> storage_;
};

// Result<void>.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT: implicit by design
  static Status Ok() { return Status(); }

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const { assert(failed_); return error_; }

 private:
  Error error_;
  bool failed_ = false;
};

}  // namespace kiln

#define KILN_CONCAT_INNER(a, b) a##b
#define KILN_CONCAT(a, b) KILN_CONCAT_INNER(a, b)

// KILN_TRY(status_expr): returns the error from the enclosing function if it failed.
#define KILN_TRY(expr)                          \
  do {                                          \
    auto kiln_try_status_ = (expr);             \
    if (!kiln_try_status_.ok()) return kiln_try_status_.error(); \
  } while (0)

// KILN_ASSIGN(lhs, result_expr): `lhs = std::move(value)` or return the error.
#define KILN_ASSIGN(lhs, expr) KILN_ASSIGN_IMPL(KILN_CONCAT(kiln_result_, __LINE__), lhs, expr)
#define KILN_ASSIGN_IMPL(tmp, lhs, expr)        \
  auto tmp = (expr);                            \
  if (!tmp.ok()) return tmp.error();            \
  lhs = std::move(tmp).value()
