// deepmoe quantize: a model directory or .gguf in, a quantized HF directory out that every
// command loads with no extra flag (docs/quantization.md).
#include "cli/common.h"
#include "core/error.h"
#include "model/quantize_model.h"

namespace deepmoe::cli {

void add_quantize_command(CLI::App& app) {
  struct Options {
    std::string model, out, type, keep, calibration, activations = "static";
    int64_t calib_tokens = 8192, calib_seq = 256;
    int threads = 0;
  };
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("quantize", "Quantize a model's linear layers into a new model directory");
  command->add_option("--model", o->model, "model directory or .gguf (f32/bf16/f16 weights)")->required();
  command->add_option("--type", o->type, "w8, w8a8, w4g32, w4g64, w4g128 (add _asym for zero points), q8_0, q4_0")
      ->required();
  command->add_option("--out", o->out, "output model directory")->required();
  command->add_option("--keep", o->keep, "keep tensors whose whole HF name matches this regex at their precision");
  command->add_option("--calibration", o->calibration, "uint32 token file for W8A8's static activation ranges");
  command->add_option("--calib-tokens", o->calib_tokens, "calibration tokens to run");
  command->add_option("--calib-seq", o->calib_seq, "calibration window length");
  command->add_option("--activations", o->activations, "w8a8: static (calibrated, per tensor) or dynamic (per token)")
      ->check(CLI::IsMember({"static", "dynamic"}));
  command->add_option("--threads", o->threads, "threads (0: all cores)");
  command->callback([o] {
    const auto weights = load_model(o->model);
    if (weights->config.quantization)
      fail("{} is already quantized ({}); quantize the f32/bf16 model", o->model, weights->config.quantization->format);
    QuantizeRequest request;
    request.type = o->type;
    request.keep_regex = o->keep;
    request.activations = o->activations;
    if (o->type == "w8a8" && o->activations == "static") {
      if (o->calibration.empty())
        fail("--type w8a8 with static activations needs --calibration F.u32 (or use --activations dynamic)");
      request.calibration = calibrate_activation_ranges(*weights, o->calibration, o->calib_tokens, o->calib_seq,
                                                        resolve_threads(o->threads));
    } else if (!o->calibration.empty() && o->type != "w8a8") {
      fail("--calibration is only used by --type w8a8");
    }
    const QuantizeSummary s = quantize_model(*weights, o->model, request, o->out);
    fmt::print(
        "{}: {} matrices quantized to {}, kept: {} by rule (embeddings, router, kv_b_proj), {} by --keep, "
        "{} by shape; {:.1f} MiB -> {:.1f} MiB\n",
        o->out, s.quantized, o->type, s.kept_by_rule, s.kept_by_regex, s.kept_by_shape,
        double(s.bytes_before) / (1 << 20), double(s.bytes_after) / (1 << 20));
  });
}

}  // namespace deepmoe::cli
