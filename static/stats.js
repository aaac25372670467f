// One key's stats over 7, 30 or 90 days: totals, calls per day, calls per model, and what is
// left of its limits (when the key has limits).
import { api } from './api.js';
import { callsPerDay, meter } from './chart.js';
import { fill, h } from './dom.js';
import { ms, num, percent, usd } from './format.js';
import { t } from './i18n.js';
import { bindingSummary, upstreamChoices } from './key_forms.js';
import { badge, expiry } from './keys.js';

let days = 30;

export async function renderStats(main, id) {
  fill(main, h('p', { class: 'state state-loading', text: t('state.loading') }));
  let key;
  let stats;
  let upstreams;
  try {
    [key, stats, upstreams] = await Promise.all([api('GET', `/api/api-keys/${id}`), api('GET', `/api/api-keys/${id}/stats?days=${days}`),
      upstreamChoices().catch(() => null)]);
  } catch (err) {
    fill(main, h('a', { class: 'back', href: '#/keys' }, `← ${t('nav.back_to_keys')}`),
      h('p', { class: 'state state-error', role: 'alert', text: t('state.error', { message: err.message }) }));
    return;
  }
  const range = h('div', { class: 'seg', role: 'group', 'aria-label': t('field.period') },
    [7, 30, 90].map((n) => h('button', {
      type: 'button', class: 'btn', 'aria-pressed': String(n === days), 'data-days': n,
      onClick: () => { days = n; renderStats(main, id).then(() => main.querySelector(`[data-days="${n}"]`)?.focus()); },
    }, t('stats.days', { n }))));
  const card = (label, value, testId) => h('div', { class: 'card', 'data-stat': testId }, h('div', { class: 'label', text: label }), h('div', { class: 'value', text: value }));
  fill(main, 
    h('a', { class: 'back', href: '#/keys' }, `← ${t('nav.back_to_keys')}`),
    h('h1', {}, t('title.stats', { name: key.name }), ' ', badge(key)),
    bindingSummary(key, upstreams),
    h('div', { class: 'toolbar' }, range,
      h('span', { class: 'muted' }, t('col.expires'), ': ', expiry(key)),
      h('a', { class: 'btn', href: `#/keys/${id}/logs` }, t('action.logs'))),
    h('div', { class: 'cards' },
      card(t('stats.total'), num(stats.total_calls), 'total'),
      card(t('stats.success'), num(stats.success_calls), 'success'),
      card(t('stats.errors'), num(stats.error_calls), 'errors'),
      card(t('stats.success_rate'), percent(stats.success_rate), 'rate'),
      card(t('stats.avg_time'), ms(stats.avg_response_time_ms), 'avg'),
      card(t('stats.tokens'), num(stats.total_tokens), 'tokens'),
      card(t('stats.prompt_completion'), `${num(stats.prompt_tokens)} / ${num(stats.completion_tokens)}`, 'prompt'),
      card(t('stats.cost'), usd(stats.total_cost), 'cost')),
    quota(key),
    h('h2', { text: t('stats.per_day') }),
    h('div', { class: 'panel chart' }, stats.total_calls === 0
      ? h('p', { class: 'state', id: 'no-calls', text: t('empty.calls') })
      : [callsPerDay(stats.by_day, Math.max(300, Math.min(1400, main.clientWidth - 40))),
        h('div', { class: 'legend' }, h('span', {}, h('span', { class: 'swatch swatch-ok' }), t('stats.success')),
          h('span', {}, h('span', { class: 'swatch swatch-err' }), t('stats.errors')))]),
    h('h2', { text: t('stats.per_model') }),
    byModel(stats));
}

function byModel(stats) {
  if (stats.by_model.length === 0) return h('p', { class: 'state', text: t('empty.calls') });
  const most = Math.max(...stats.by_model.map((m) => m.calls));
  return h('div', { class: 'table-wrap' }, h('table', { class: 'cards-on-phone', id: 'model-table' },
    h('thead', {}, h('tr', {}, [t('col.model'), t('stats.total'), '', t('stats.success'), t('stats.errors'), t('stats.avg_time'), t('stats.tokens'), t('stats.cost')]
      .map((label, i) => h('th', { scope: 'col', class: i > 0 ? 'num' : '', text: label })))),
    h('tbody', {}, stats.by_model.map((m) => h('tr', {},
      h('td', { 'data-label': t('col.model') }, h('code', { text: m.model || t('misc.no_model') })),
      h('td', { class: 'num', 'data-label': t('stats.total'), text: num(m.calls) }),
      h('td', { class: 'num' }, meter(m.success_calls, most, m.error_calls)),
      h('td', { class: 'num', 'data-label': t('stats.success'), text: num(m.success_calls) }),
      h('td', { class: 'num', 'data-label': t('stats.errors'), text: num(m.error_calls) }),
      h('td', { class: 'num', 'data-label': t('stats.avg_time'), text: ms(m.avg_response_time_ms) }),
      h('td', { class: 'num', 'data-label': t('stats.tokens'), text: num(m.total_tokens) }),
      h('td', { class: 'num', 'data-label': t('stats.cost'), text: usd(m.cost) }))))));
}

/** Used and left of each limit the key has set (fields present only where limits exist). */
function quota(key) {
  const rows = [
    ['token_limit', key.total_tokens_used, num],
    ['total_cost_limit', key.total_cost, usd],
    ['daily_cost_limit', key.daily_cost, usd],
    ['weekly_cost_limit', key.weekly_cost, usd],
  ].filter(([limit, used]) => key[limit] > 0 && used !== undefined);
  const window = ['rate_limit_requests', 'rate_limit_tokens', 'rate_limit_cost', 'concurrency_limit']
    .filter((name) => key[name] > 0);
  if (rows.length === 0 && window.length === 0) return null;
  return h('div', {},
    h('h2', { text: t('stats.quota') }),
    h('div', { class: 'table-wrap' }, h('table', { id: 'quota-table' },
      h('thead', {}, h('tr', {}, [t('col.limit'), t('col.used'), t('col.remaining'), ''].map((label) => h('th', { scope: 'col', text: label })))),
      h('tbody', {},
        rows.map(([limit, used, fmt]) => h('tr', {},
          h('td', { text: t(`field.${limit}`) }),
          h('td', { class: 'num', text: `${fmt(used)} / ${fmt(key[limit])}` }),
          h('td', { class: 'num', text: fmt(Math.max(0, key[limit] - used)) }),
          h('td', {}, meter(Math.min(used, key[limit]), key[limit])))),
        window.map((name) => h('tr', {},
          h('td', { text: t(`field.${name}`) }),
          h('td', { class: 'num', text: name === 'concurrency_limit' ? num(key[name]) : t('stats.per_window', { value: name === 'rate_limit_cost' ? usd(key[name]) : num(key[name]), minutes: key.rate_limit_window || 1 }) }),
          h('td', { class: 'muted', text: '' }), h('td', {})))))));
}
