// A paged list: its loads (the latest wins) and the pager under it, "page N of M (T)",
// previous and next.
import { api } from './api.js';
import { clear, fill, h } from './dom.js';
import { t } from './i18n.js';

/** Fills `pager` for `list` (`total`, `page_size`) at `view.page`; `reload` shows another page.
 * Ids are `${prefix}-count`, `-prev`, `-next`. */
export function fillPager(pager, prefix, view, list, reload) {
  const pages = Math.max(1, Math.ceil(list.total / list.page_size));
  fill(pager,
    h('span', { class: 'muted', id: `${prefix}-count`, text: t('pager.summary', { page: view.page, pages, total: list.total }) }),
    h('button', { type: 'button', class: 'btn', id: `${prefix}-prev`, disabled: view.page <= 1, onClick: () => { view.page--; reload(); } }, t('pager.prev')),
    h('button', { type: 'button', class: 'btn', id: `${prefix}-next`, disabled: view.page >= pages, onClick: () => { view.page++; reload(); } }, t('pager.next')));
}

/** The load of a paged list's current page into `body`, its pager in `pager` (ids
 * `${prefix}-…`): `path()` is the page's API path for the view now, `render(items)` draws a
 * page with rows, `empty` names the empty state (id `${empty}-empty`, text `empty.${empty}`).
 * Each load is numbered: an answer that arrives after a newer load started (the filters
 * changed meanwhile) is dropped, so the list always shows the latest filters. */
export function pageLoader(body, pager, { prefix, empty, view, path, render }) {
  let loads = 0;
  const load = async () => {
    const seq = ++loads;
    fill(body, h('p', { class: 'state state-loading', text: t('state.loading') }));
    let list;
    try {
      list = await api('GET', path());
    } catch (err) {
      if (seq !== loads) return;
      fill(body, h('p', { class: 'state state-error', role: 'alert', text: t('state.error', { message: err.message }) }));
      clear(pager);
      return;
    }
    if (seq !== loads) return;
    fill(body, list.items.length === 0
      ? h('p', { class: 'state', id: `${empty}-empty`, text: t(`empty.${empty}`) })
      : render(list.items));
    fillPager(pager, prefix, view, list, load);
  };
  return load;
}
