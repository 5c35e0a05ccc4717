// The web playground served at GET / (src/server/playground.html): a self-contained page that talks
// to the server's own OpenAI-compatible API. Its bytes are embedded at build time by
// src/server/embed_file.cmake, so the binary serves it with no files beside it.
#pragma once

#include <string_view>

namespace kiln {

// The page as UTF-8 HTML (Content-Type: text/html; charset=utf-8). Static storage, never freed.
std::string_view playground_html();

}  // namespace kiln
