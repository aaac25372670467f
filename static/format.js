// Numbers, times, sizes and money in the chosen language.
import { lang, t } from './i18n.js';

const locale = () => (lang() === 'zh' ? 'zh-CN' : 'en-GB');

export function dateTime(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeStyle: 'short' }).format(date);
}

export function dateTimeSeconds(iso) {
  if (!iso) return '—';
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeStyle: 'medium' }).format(new Date(iso));
}

/** The time of day, HH:MM:SS in the browser's zone (a time in ms or RFC 3339). */
export function clock(when) {
  if (when === null || when === undefined) return '—';
  const date = new Date(when);
  if (Number.isNaN(date.getTime())) return String(when);
  return new Intl.DateTimeFormat(locale(), { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' }).format(date);
}

/** "in 3 days" / "2 hours ago" for a number of seconds from now (negative: past). */
export function relative(seconds) {
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: 'auto' });
  const abs = Math.abs(seconds);
  const steps = [[60, 'second', 1], [3600, 'minute', 60], [86400, 'hour', 3600], [86400 * 60, 'day', 86400], [86400 * 730, 'month', 86400 * 30], [Infinity, 'year', 86400 * 365]];
  for (const [limit, unit, size] of steps) {
    if (abs < limit) return rtf.format(Math.trunc(seconds / size), unit);
  }
  return '';
}

export function num(n) {
  if (n === null || n === undefined) return '—';
  return new Intl.NumberFormat(locale()).format(n);
}

export function usd(n) {
  if (n === null || n === undefined) return '—';
  const digits = n !== 0 && Math.abs(n) < 0.01 ? 6 : 4;
  return '$' + new Intl.NumberFormat(locale(), { maximumFractionDigits: digits, minimumFractionDigits: 2 }).format(n);
}

export function percent(ratio) {
  return new Intl.NumberFormat(locale(), { style: 'percent', maximumFractionDigits: 1 }).format(ratio || 0);
}

export function ms(n) {
  return `${num(Math.round(n || 0))} ${t('unit.ms')}`;
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A `datetime-local` input's value as an RFC 3339 UTC time (the browser's zone applied). */
export function localInputToUtc(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

/** An RFC 3339 time as a `datetime-local` value in the browser's zone. */
export function utcToLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
