// The audit log: admin changes, newest first, filtered by action and key, paginated.
import { query } from './api.js';
import { fill, h } from './dom.js';
import { dateTimeSeconds } from './format.js';
import { t } from './i18n.js';
import { pageLoader } from './pager.js';

/** The actions `GET /api/audit-log?action=` takes (src/audit.rs `Action`). */
const ACTIONS = ['create', 'edit', 'renew', 'batch_renew', 'revoke', 'regenerate', 'delete', 'default_expiry',
  'import', 'prune', 'login', 'logout', 'login_failures', 'upstream.create', 'upstream.update', 'upstream.delete'];

const view = { page: 1, pageSize: 50, action: '', keyId: '' };

export async function renderAudit(main) {
  const action = h('select', { id: 'audit-action' },
    h('option', { value: '', text: t('filter.all_actions') }),
    ACTIONS.map((a) => h('option', { value: a, selected: a === view.action, text: a })));
  const key = h('input', { type: 'number', min: '1', id: 'audit-key', value: view.keyId, placeholder: t('hint.key_id') });
  const body = h('div', { 'aria-live': 'polite' });
  const pager = h('div', { class: 'inline', id: 'audit-pager' });
  const load = pageLoader(body, pager, {
    prefix: 'audit', empty: 'audit', view, render: table,
    path: () => `/api/audit-log${query({ page: view.page, page_size: view.pageSize, action: view.action, key_id: view.keyId })}`,
  });
  const refilter = () => { view.page = 1; load(); };
  action.addEventListener('change', () => { view.action = action.value; refilter(); });
  key.addEventListener('change', () => { view.keyId = key.value.trim(); refilter(); });
  fill(main,
    h('h1', { text: t('title.audit') }),
    h('p', { class: 'muted', text: t('hint.audit') }),
    h('div', { class: 'toolbar' },
      h('label', { class: 'field' }, h('span', { text: t('field.action') }), action),
      h('label', { class: 'field' }, h('span', { text: t('field.key_id') }), key),
      h('button', { type: 'button', class: 'btn', id: 'audit-refresh', onClick: load }, t('action.refresh'))),
    body,
    h('div', { class: 'pager' }, pager));
  await load();
}

/** Who made a change: the console, the admin token, or the CLI (with its OS user), and from where. */
function who(entry) {
  const via = t(`audit.via.${entry.via}`);
  const detail = [entry.os_user, entry.ip].filter(Boolean).join(' · ');
  return detail ? `${via} (${detail})` : via;
}

/** What changed: `field: old → new` for each change, then the entry's other figures. */
function changes(details) {
  const { changes: changed, upstream_id: _id, upstream_name: _name, ...rest } = details || {};
  const lines = changed && typeof changed === 'object'
    ? Object.entries(changed).map(([field, { old, new: now }]) => `${field}: ${JSON.stringify(old)} → ${JSON.stringify(now)}`)
    : [];
  for (const [field, value] of Object.entries(rest)) lines.push(`${field}: ${JSON.stringify(value)}`);
  return lines.map((text) => h('div', { class: 'mono small', text }));
}

function table(entries) {
  const columns = ['col.time', 'col.action', 'col.by', 'col.subject', 'col.details'];
  return h('div', { class: 'table-wrap' }, h('table', { class: 'cards-on-phone dense', id: 'audit-table' },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', text: t(c) })))),
    h('tbody', {}, entries.map((e) => {
      const upstream = e.details && e.details.upstream_name;
      const subject = e.key_id !== null
        ? `${e.key_name || ''} (#${e.key_id})`
        : upstream ? `${upstream} (${t('audit.upstream')} #${e.details.upstream_id})` : '—';
      return h('tr', { 'data-audit-id': e.id, 'data-action': e.action },
        h('td', { 'data-label': t('col.time'), class: 'nowrap', text: dateTimeSeconds(e.at) }),
        h('td', { 'data-label': t('col.action') }, h('code', { text: e.action })),
        h('td', { 'data-label': t('col.by'), text: who(e) }),
        h('td', { 'data-label': t('col.subject'), text: subject }),
        h('td', { 'data-label': t('col.details') }, changes(e.details)));
    }))));
}
