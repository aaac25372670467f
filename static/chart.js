// Charts drawn as SVG by this code: calls per day (success and error stacked), calls per model.
import { s } from './dom.js';
import { num } from './format.js';
import { t } from './i18n.js';

/** A round upper bound for an axis: 1, 2, 5 × 10^n at or above `max`. */
function niceMax(max) {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 3, 4, 5, 6, 8, 10].map((m) => m * power).find((v) => v >= max);
}

/**
 * Stacked bars per day: `days` is the stats' `by_day` (every day of the window); `width` the
 * pixels it will take, so that its text keeps its size on a phone.
 */
export function callsPerDay(days, width) {
  const height = 240;
  const left = 44;
  const bottom = 26;
  const top = 10;
  const plotW = width - left - 8;
  const plotH = height - top - bottom;
  const max = niceMax(Math.max(0, ...days.map((d) => d.calls)));
  const slot = plotW / Math.max(1, days.length);
  const barW = Math.max(1, Math.min(28, slot * 0.75));
  const y = (v) => top + plotH - (v / max) * plotH;
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': t('chart.per_day_label', { days: days.length }), id: 'calls-chart' });
  for (const tick of [0, max / 2, max]) {
    svg.append(
      s('line', { class: 'axis', x1: left, x2: width - 4, y1: y(tick), y2: y(tick) }),
      s('text', { x: left - 6, y: y(tick) + 4, 'text-anchor': 'end' }, num(Math.round(tick * 10) / 10)));
  }
  const labelEvery = Math.ceil(days.length / Math.max(2, Math.floor(plotW / 48)));
  days.forEach((day, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    const group = s('g', { class: 'day', 'data-date': day.date, 'data-success': day.success_calls, 'data-error': day.error_calls },
      s('title', {}, t('chart.day_tooltip', { date: day.date, success: day.success_calls, error: day.error_calls })));
    if (day.success_calls > 0) {
      group.append(s('rect', { class: 'bar-ok', x, width: barW, y: y(day.success_calls), height: plotH - (y(day.success_calls) - top) }));
    }
    if (day.error_calls > 0) {
      group.append(s('rect', { class: 'bar-err', x, width: barW, y: y(day.calls), height: y(day.success_calls) - y(day.calls) }));
    }
    svg.append(group);
    const last = i === days.length - 1 && i % labelEvery >= labelEvery / 2;
    if (i % labelEvery === 0 || last) {
      svg.append(s('text', { x: x + barW / 2, y: height - 8, 'text-anchor': 'middle' }, day.date.slice(5)));
    }
  });
  return svg;
}

/** A small horizontal meter: `part` of `whole` (success green-blue, the rest red). */
export function meter(part, whole, errorPart = 0) {
  const w = 120;
  const svg = s('svg', { class: 'meter', viewBox: `0 0 ${w} 10`, 'aria-hidden': 'true', preserveAspectRatio: 'none' },
    s('rect', { class: 'bg', x: 0, y: 0, width: w, height: 10, rx: 3 }));
  if (whole > 0) {
    const ok = (part / whole) * w;
    svg.append(s('rect', { class: 'fg', x: 0, y: 0, width: ok, height: 10, rx: 3 }));
    if (errorPart > 0) svg.append(s('rect', { class: 'fg-err', x: ok, y: 0, width: (errorPart / whole) * w, height: 10 }));
  }
  return svg;
}
