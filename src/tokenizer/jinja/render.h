// Renders a parsed template with a JSON context (messages, add_generation_prompt, bos_token...).
// Nothing in a template can touch files, the environment or the process: it only builds text.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <string>

#include "tokenizer/jinja/ast.h"

namespace deepmoe::jinja {

// Throws Error for raise_exception(), unsupported filters/tests/methods (named) and type errors.
std::string render(const Template& tmpl, const nlohmann::json& context);

}  // namespace deepmoe::jinja
