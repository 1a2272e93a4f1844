// deepmoe convert --to gguf: an HF model directory into llama.cpp's GGUF (deepseek2).
#include <map>

#include "cli/common.h"
#include "core/error.h"
#include "model/gguf_export.h"

namespace deepmoe::cli {

void add_convert_command(CLI::App& app) {
  struct Options {
    std::string to, model, out, type = "f32";
  };
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("convert", "Convert an HF model directory to GGUF (llama.cpp's deepseek2)");
  command->add_option("--to", o->to, "target format: gguf")->required()->check(CLI::IsMember({"gguf"}));
  command->add_option("--model", o->model, "HF model directory")->required();
  command->add_option("--out", o->out, "output .gguf file")->required();
  command->add_option("--type", o->type, "matrix type: f32, f16, q8_0 or q4_0 (norms and router stay f32)")
      ->check(CLI::IsMember({"f32", "f16", "q8_0", "q4_0"}));
  command->callback([o] {
    static const std::map<std::string, GgmlType> types{
        {"f32", GgmlType::F32}, {"f16", GgmlType::F16}, {"q8_0", GgmlType::Q8_0}, {"q4_0", GgmlType::Q4_0}};
    export_gguf(o->model, o->out, types.at(o->type));
    fmt::print("wrote {} ({})\n", o->out, o->type);
  });
}

}  // namespace deepmoe::cli
