#include "train/plots.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <vector>

#include "core/error.h"
#include "io/mapped_file.h"

namespace deepmoe::train {

namespace {

constexpr double kWidth = 640, kHeight = 360, kLeft = 64, kRight = 16, kTop = 28, kBottom = 40;

struct Series {
  std::string label, color;
  std::vector<std::pair<double, double>> points;  // (step, value)
};

std::string line_chart(const std::string& title, const std::vector<Series>& series, bool log_y) {
  double x0 = std::numeric_limits<double>::max(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points) {
      const double v = log_y ? std::log10(std::max(y, 1e-12)) : y;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, v), y1 = std::max(y1, v);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  const auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * w; };
  const auto py = [&](double y) {
    return kTop + (1 - ((log_y ? std::log10(std::max(y, 1e-12)) : y) - y0) / (y1 - y0)) * h;
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"18\" font-size=\"14\">{}</text>\n"
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n",
      kWidth, kHeight, kLeft, title, kLeft, kTop, w, h);
  for (int i = 0; i <= 4; ++i) {  // axis labels
    const double fy = y0 + (y1 - y0) * i / 4, fx = x0 + (x1 - x0) * i / 4;
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3g}</text>\n", kLeft - 4,
                       kTop + h * (1 - i / 4.0) + 4, log_y ? std::pow(10.0, fy) : fy);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0f}</text>\n", kLeft + w * i / 4.0,
                       kHeight - kBottom + 16, fx);
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n", kLeft + w / 2, kHeight - 6);
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& s = series[i];
    if (s.points.empty()) continue;
    std::string path;
    for (const auto& [x, y] : s.points) path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", px(x), py(y));
    svg += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>\n", path, s.color);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n", kWidth - kRight - 150,
                       kTop + 16 + 16 * double(i), s.color, s.label);
  }
  return svg + "</svg>\n";
}

std::string heatmap(const std::vector<std::vector<double>>& rows, const std::vector<double>& steps) {
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"18\" font-size=\"14\">expert load per MoE layer: max / mean (white 1 = balanced, red >= "
      "4)</text>\n",
      kWidth, kHeight, kLeft);
  const size_t layers = rows.size(), columns = steps.size();
  if (layers == 0 || columns == 0) return svg + "</svg>\n";
  const double cw = w / double(columns), ch = h / double(layers);
  for (size_t l = 0; l < layers; ++l) {
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">MoE {}</text>\n", kLeft - 4,
                       kTop + ch * (double(l) + 0.5) + 4, l);
    for (size_t c = 0; c < columns && c < rows[l].size(); ++c) {
      const double t = std::clamp((rows[l][c] - 1.0) / 3.0, 0.0, 1.0);
      const int g = int(255 * (1 - t));
      svg +=
          fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"rgb(255,{},{})\"/>\n",
                      kLeft + cw * double(c), kTop + ch * double(l), cw + 0.5, ch, g, g);
    }
  }
  svg += fmt::format(
      "<text x=\"{}\" y=\"{}\">step {:.0f}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">step {:.0f}</text>\n",
      kLeft, kHeight - kBottom + 16, steps.front(), kWidth - kRight, kHeight - kBottom + 16, steps.back());
  return svg + "</svg>\n";
}

void write(const std::filesystem::path& path, const std::string& text) {
  write_file_atomically(path.string(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()});
}

}  // namespace

void write_plots(const std::string& dir) {
  const std::filesystem::path root(dir);
  std::ifstream in(root / "metrics.jsonl");
  if (!in) fail("{}/metrics.jsonl: cannot open", dir);
  Series loss{"train loss", "#1f77b4", {}}, val{"validation loss", "#d62728", {}}, lr{"learning rate", "#2ca02c", {}};
  // The later stages' measures, when the run logs them: GRPO's mean reward, DPO's accuracy.
  Series reward{"mean reward", "#1f77b4", {}}, kl{"KL to the reference", "#d62728", {}};
  Series accuracy{"preference accuracy", "#1f77b4", {}};
  std::vector<std::vector<double>> load;
  std::vector<double> steps;
  for (std::string line; std::getline(in, line);) {
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      fail("{}/metrics.jsonl: a line is not JSON", dir);
    }
    const double step = m.value("step", 0.0) + 1;
    loss.points.emplace_back(step, m.value("loss", 0.0));
    lr.points.emplace_back(step, m.value("lr", 0.0));
    if (m.contains("val_loss")) val.points.emplace_back(step, m["val_loss"].get<double>());
    steps.push_back(step);
    if (m.contains("reward")) reward.points.emplace_back(step, m["reward"].get<double>());
    if (m.contains("kl")) kl.points.emplace_back(step, m["kl"].get<double>());
    if (m.contains("accuracy")) accuracy.points.emplace_back(step, m["accuracy"].get<double>());
    const auto& layers = m.value("expert_load", nlohmann::json::array());
    load.resize(std::max(load.size(), layers.size()));
    for (size_t l = 0; l < layers.size(); ++l) load[l].push_back(layers[l].value("max_over_mean", 1.0));
  }
  write(root / "loss.svg", line_chart("loss", {loss, val}, true));
  write(root / "lr.svg", line_chart("learning rate", {lr}, false));
  write(root / "expert_load.svg", heatmap(load, steps));
  if (!reward.points.empty()) write(root / "reward.svg", line_chart("GRPO", {reward, kl}, false));
  if (!accuracy.points.empty()) write(root / "preference.svg", line_chart("DPO", {accuracy}, false));
}

}  // namespace deepmoe::train
