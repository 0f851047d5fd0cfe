// models/svg_plot.cpp: data ranges, tick placement and the SVG text of the line chart.
#include "models/svg_plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace lg::plot {

namespace {

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

// Tick spacing 1, 2 or 5 x 10^k giving about `target` intervals over [lo, hi]
// (Heckbert, "Nice numbers for graph labels", Graphics Gems, 1990).
double nice_step(double lo, double hi, int target) {
  double raw = (hi - lo) / target;
  double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double f = raw / magnitude;
  double nice = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  return nice * magnitude;
}

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else if (c == '"')
      out += "&quot;";
    else
      out += c;
  }
  return out;
}

std::string tick_label(double v, double step) {
  if (std::fabs(v) < step * 1e-9) v = 0;
  int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  return fmt::format("{:.{}f}", v, decimals);
}

}  // namespace

std::string line_chart_svg(const std::vector<Series>& series, const std::string& title,
                           const std::string& x_label, const std::string& y_label, bool x_from_zero,
                           int width, int height) {
  // plot area inside margins (pixels)
  const double left = 70, right = 20, top = 40, bottom = 55;
  const double plot_w = width - left - right, plot_h = height - top - bottom;

  Range xr, yr;
  for (auto& s : series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
        xr.add(s.x[i]);
        yr.add(s.y[i]);
      }
  if (x_from_zero && !xr.empty()) xr.add(0);
  if (xr.empty()) xr = {0, 1};
  if (yr.empty()) yr = {0, 1};
  if (xr.hi - xr.lo < 1e-12) xr = {xr.lo - 1, xr.hi + 1};
  if (yr.hi - yr.lo < 1e-12) yr = {yr.lo - 0.5, yr.hi + 0.5};
  // axes start and end on ticks
  double xstep = nice_step(xr.lo, xr.hi, 8), ystep = nice_step(yr.lo, yr.hi, 6);
  double x0 = std::floor(xr.lo / xstep) * xstep, x1 = std::ceil(xr.hi / xstep) * xstep;
  double y0 = std::floor(yr.lo / ystep) * ystep, y1 = std::ceil(yr.hi / ystep) * ystep;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * plot_w; };
  auto py = [&](double y) { return top + (1.0 - (y - y0) / (y1 - y0)) * plot_h; };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{3}</text>\n",
      width, height, left + plot_w / 2, escape(title));

  // grid lines and tick labels
  for (double x = x0; x <= x1 + xstep * 1e-6; x += xstep)
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"#e5e5e5\"/>"
        "<line x1=\"{0:.1f}\" y1=\"{2:.1f}\" x2=\"{0:.1f}\" y2=\"{3:.1f}\" stroke=\"black\"/>"
        "<text x=\"{0:.1f}\" y=\"{4:.1f}\" text-anchor=\"middle\">{5}</text>\n",
        px(x), top, top + plot_h, top + plot_h + 5, top + plot_h + 19, tick_label(x, xstep));
  for (double y = y0; y <= y1 + ystep * 1e-6; y += ystep)
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"#e5e5e5\"/>"
        "<line x1=\"{3:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{1:.1f}\" stroke=\"black\"/>"
        "<text x=\"{4:.1f}\" y=\"{5:.1f}\" text-anchor=\"end\">{6}</text>\n",
        left, py(y), left + plot_w, left - 5, left - 8, py(y) + 4, tick_label(y, ystep));

  // axes and their labels
  svg += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" stroke=\"black\"/>\n",
      left, top, plot_w, plot_h);
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", left + plot_w / 2,
                     static_cast<double>(height) - 12, escape(x_label));
  svg += fmt::format(
      "<text x=\"18\" y=\"{0:.1f}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0:.1f})\">{1}</text>\n",
      top + plot_h / 2, escape(y_label));

  // the series
  for (auto& s : series) {
    std::string points, markers;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      points += fmt::format("{:.1f},{:.1f} ", px(s.x[i]), py(s.y[i]));
      markers += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>", px(s.x[i]),
                             py(s.y[i]), s.color);
    }
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n{}\n",
                       s.color, points, markers);
  }

  // legend, top right inside the plot area
  double lx = left + plot_w - 130, ly = top + 12;
  svg += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"120\" height=\"{:.1f}\" fill=\"white\" stroke=\"#999\"/>\n",
      lx - 8, ly - 8, 20.0 * static_cast<double>(series.size()) + 6);
  for (size_t i = 0; i < series.size(); ++i) {
    double y = ly + 20.0 * static_cast<double>(i) + 5;
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"{3}\" "
        "stroke-width=\"2\"/>"
        "<text x=\"{4:.1f}\" y=\"{5:.1f}\">{6}</text>\n",
        lx, y, lx + 24, series[i].color, lx + 32, y + 4, escape(series[i].name));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace lg::plot
