// models/svg_plot.h: a hand-written SVG line chart (axes, ticks, grid, legend) for loss curves.
#pragma once

#include <string>
#include <vector>

namespace lg::plot {

struct Series {
  std::string name;
  std::string color;         // any SVG colour, e.g. "#1f77b4"
  std::vector<double> x, y;  // same length; non-finite points are skipped
};

// A complete standalone SVG document (width x height pixels) with the series as polylines
// plus point markers, "nice" ticks (1, 2, 5 x 10^k) on both axes and a legend. x_from_zero
// starts the x axis at 0 (training steps) instead of at the smallest x.
std::string line_chart_svg(const std::vector<Series>& series, const std::string& title,
                           const std::string& x_label, const std::string& y_label, bool x_from_zero = false,
                           int width = 720, int height = 440);

}  // namespace lg::plot
