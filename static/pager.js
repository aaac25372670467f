// The pager under a paged list: "page N of M (T)", previous and next.
import { fill, h } from './dom.js';
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
