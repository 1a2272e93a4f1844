// deepmoe convert --to gguf: an HF model directory into llama.cpp's GGUF (deepseek2);
// --to hf: a .gguf (or a quantized directory) back into a plain HF directory.
#include <map>

#include "cli/common.h"
#include "core/error.h"
#include "model/gguf_export.h"
#include "model/hf_directory.h"

namespace deepmoe::cli {

void add_convert_command(CLI::App& app) {
  struct Options {
    std::string to, model, out, type = "f32";
  };
  auto o = std::make_shared<Options>();
  auto* command =
      app.add_subcommand("convert", "Convert between HF model directories and GGUF (llama.cpp's deepseek2)");
  command->add_option("--to", o->to, "target format: gguf or hf")->required()->check(CLI::IsMember({"gguf", "hf"}));
  command->add_option("--model", o->model, "HF model directory (--to gguf); .gguf or model directory (--to hf)")
      ->required();
  command->add_option("--out", o->out, "output .gguf file or directory")->required();
  command->add_option("--type", o->type, "gguf: f32, f16, q8_0 or q4_0 (norms and router stay f32); hf: f32 or bf16")
      ->check(CLI::IsMember({"f32", "f16", "q8_0", "q4_0", "bf16"}));
  command->callback([o] {
    if (o->to == "hf") {
      if (o->type != "f32" && o->type != "bf16") fail("--to hf writes f32 or bf16, not {}", o->type);
      const auto weights = load_model(o->model);
      export_hf_directory(*weights, o->model, o->out, o->type == "f32" ? DType::F32 : DType::BF16);
      fmt::print("wrote {} ({})\n", o->out, o->type);
      return;
    }
    if (o->type == "bf16") fail("--to gguf writes f32, f16, q8_0 or q4_0, not bf16");
    static const std::map<std::string, GgmlType> types{
        {"f32", GgmlType::F32}, {"f16", GgmlType::F16}, {"q8_0", GgmlType::Q8_0}, {"q4_0", GgmlType::Q4_0}};
    export_gguf(o->model, o->out, types.at(o->type));
    fmt::print("wrote {} ({})\n", o->out, o->type);
  });
}

}  // namespace deepmoe::cli
