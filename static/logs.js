// Call logs, all or one key's: newest first, paginated, filtered by status, key and model.
import { api, query } from './api.js';
import { debounce, fill, h } from './dom.js';
import { bytes, dateTimeSeconds, ms, num, usd } from './format.js';
import { t } from './i18n.js';
import { pageLoader } from './pager.js';

const view = { page: 1, pageSize: 20, status: '', model: '', keyId: '' };
let keyNames = new Map();

/** Names of up to 1000 keys, for the key column and the key filter. */
async function loadKeyNames() {
  const names = new Map();
  for (let page = 1; page <= 5; page++) {
    const list = await api('GET', `/api/api-keys${query({ page, page_size: 200 })}`);
    list.items.forEach((k) => names.set(k.id, k.name));
    if (page * list.page_size >= list.total) break;
  }
  return names;
}

export async function renderLogs(main, fixedKey) {
  if (String(view.fixed || '') !== String(fixedKey || '')) {
    // Another key's page (or all logs): start over, unfiltered.
    Object.assign(view, { page: 1, status: '', model: '' });
    view.keyId = fixedKey ? String(fixedKey) : '';
    view.fixed = fixedKey || '';
  }
  fill(main, h('p', { class: 'state state-loading', text: t('state.loading') }));
  try {
    keyNames = await loadKeyNames();
  } catch (err) {
    fill(main, h('p', { class: 'state state-error', role: 'alert', text: t('state.error', { message: err.message }) }));
    return;
  }
  const status = h('select', { id: 'log-status' }, ['', 'success', 'error'].map((s) =>
    h('option', { value: s, selected: s === view.status, text: s ? t(`log.${s}`) : t('filter.all_statuses') })));
  const key = h('select', { id: 'log-key', disabled: Boolean(fixedKey) },
    h('option', { value: '', text: t('filter.all_keys') }),
    [...keyNames].map(([id, name]) => h('option', { value: id, selected: String(id) === String(view.keyId), text: `${name} (#${id})` })));
  const model = h('input', { type: 'text', id: 'log-model', value: view.model, placeholder: t('hint.model') });
  const size = h('select', { id: 'log-page-size', 'aria-label': t('field.page_size') },
    [10, 20, 50, 100, 200].map((n) => h('option', { value: n, selected: n === view.pageSize, text: t('field.per_page', { n }) })));
  const body = h('div', { 'aria-live': 'polite' });
  const pager = h('div', { class: 'inline', id: 'log-pager' });
  const load = pageLoader(body, pager, {
    prefix: 'log', empty: 'logs', view, render: table,
    path: () => {
      const params = { page: view.page, page_size: view.pageSize, status: view.status, model: view.model };
      return (view.keyId ? `/api/api-keys/${view.keyId}/logs` : '/api/api-logs') + query(params);
    },
  });
  const refilter = () => { view.page = 1; load(); };
  status.addEventListener('change', () => { view.status = status.value; refilter(); });
  key.addEventListener('change', () => { view.keyId = key.value; refilter(); });
  model.addEventListener('input', debounce(() => { view.model = model.value.trim(); refilter(); }, 300));
  size.addEventListener('change', () => { view.pageSize = Number(size.value); refilter(); });
  const title = fixedKey ? t('title.key_logs', { name: keyNames.get(Number(fixedKey)) || `#${fixedKey}` }) : t('title.logs');
  fill(main, 
    fixedKey && h('a', { class: 'back', href: '#/keys' }, `← ${t('nav.back_to_keys')}`),
    h('h1', { text: title }),
    h('div', { class: 'toolbar' },
      h('label', { class: 'field' }, h('span', { text: t('field.status') }), status),
      h('label', { class: 'field' }, h('span', { text: t('field.key') }), key),
      h('label', { class: 'field' }, h('span', { text: t('field.model') }), model),
      h('button', { type: 'button', class: 'btn', id: 'log-refresh', onClick: load }, t('action.refresh'))),
    body,
    h('div', { class: 'pager' }, pager, size));
  await load();
}

function table(rows) {
  const columns = ['col.time', 'col.key', 'col.model', 'col.status', 'col.http', 'col.response_time', 'col.ip', 'col.endpoint', 'col.sizes', 'col.tokens', 'col.cost', 'col.error'];
  return h('div', { class: 'table-wrap' }, h('table', { class: 'cards-on-phone dense', id: 'logs-table' },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', text: t(c) })))),
    h('tbody', {}, rows.map((row) => {
      const keyName = row.api_key_id === null ? t('misc.unknown_key') : keyNames.get(row.api_key_id) || `#${row.api_key_id}`;
      const tokens = row.total_tokens === null ? '—' : `${num(row.total_tokens)} (${num(row.prompt_tokens)} + ${num(row.completion_tokens)})`;
      // The cached parts of the prompt (reads: OpenAI and Anthropic; writes: Anthropic).
      const cache = row.cache_read_tokens || row.cache_write_tokens
        ? t('log.cache', { read: num(row.cache_read_tokens || 0), written: num(row.cache_write_tokens || 0) })
        : null;
      return h('tr', { 'data-log-id': row.id, 'data-status': row.status },
        h('td', { 'data-label': t('col.time'), class: 'nowrap', text: dateTimeSeconds(row.timestamp) }),
        h('td', { 'data-label': t('col.key'), class: 'nowrap', text: keyName }),
        h('td', { 'data-label': t('col.model') }, h('code', { text: row.model || '—' })),
        h('td', { 'data-label': t('col.status') }, h('span', { class: `badge badge-${row.status === 'success' ? 'success' : 'error'}`, text: t(`log.${row.status}`) }), row.stream ? h('span', { class: 'muted small', text: ` ${t('log.stream')}` }) : null),
        h('td', { 'data-label': t('col.http'), class: 'num', text: row.http_status }),
        h('td', { 'data-label': t('col.response_time'), class: 'num', text: ms(row.response_time) }),
        h('td', { 'data-label': t('col.ip'), class: 'mono', text: row.ip_address || '—' }),
        h('td', { 'data-label': t('col.endpoint') }, h('code', { text: row.endpoint })),
        h('td', { 'data-label': t('col.sizes'), class: 'nowrap', text: `${bytes(row.request_size)} / ${bytes(row.response_size)}` }),
        h('td', { 'data-label': t('col.tokens'), class: 'nowrap' }, tokens, cache ? h('div', { class: 'muted small', text: cache }) : null),
        h('td', { 'data-label': t('col.cost'), class: 'num', text: usd(row.cost) }),
        h('td', { 'data-label': t('col.error'), class: 'error-text', text: row.error_message || '' }));
    }))));
}
