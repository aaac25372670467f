// Modal dialogs: native <dialog> (the page behind is inert), Tab kept inside, Esc closes,
// focus returns to where it was; a failed action shows the server's message inside (next to
// the field it names, for a 400).
import { h } from './dom.js';
import { t } from './i18n.js';

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

/**
 * Opens a dialog. `actions`: [{label, kind: 'primary'|'danger'|'plain', run}] where `run`
 * (async) returns false to keep the dialog open; a thrown error is shown in the dialog.
 * Returns {close, element, showError}.
 */
export function openDialog({ title, body, actions = [], closeLabel, onClose, id }) {
  const previous = document.activeElement;
  const error = h('div', { class: 'alert', role: 'alert', hidden: true });
  const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
  const foot = h('div', { class: 'dialog-foot' });
  const dialog = h('dialog', { 'aria-labelledby': titleId, id },
    h('div', { class: 'dialog-box' },
      h('div', { class: 'dialog-head' },
        h('h2', { id: titleId, text: title }),
        h('button', { type: 'button', class: 'btn btn-plain btn-small', 'aria-label': t('action.close'), onClick: () => close() }, '✕')),
      h('div', { class: 'dialog-body' }, error, body),
      foot));

  let closed = false;
  function close() {
    if (closed) return;
    closed = true;
    if (dialog.open) dialog.close();
    dialog.remove();
    if (onClose) onClose();
    if (previous && previous.isConnected && previous.focus) previous.focus();
  }
  function showError(message) {
    error.textContent = message;
    error.hidden = !message;
    if (message) error.scrollIntoView({ block: 'nearest' });
  }

  foot.append(h('button', { type: 'button', class: 'btn', onClick: () => close() }, closeLabel || t('action.cancel')));
  for (const action of actions) {
    const button = h('button', { type: 'button', class: `btn btn-${action.kind || 'primary'}` }, action.label);
    if (action.id) button.dataset.action = action.id;
    button.addEventListener('click', async () => {
      showError('');
      clearFieldErrors(dialog);
      const buttons = [...foot.querySelectorAll('button')];
      buttons.forEach((b) => { b.disabled = true; });
      try {
        const keepOpen = (await action.run()) === false;
        if (!keepOpen) close();
      } catch (err) {
        if (!showFieldError(dialog, err)) showError(err.message || String(err));
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    });
    foot.append(button);
  }

  dialog.addEventListener('cancel', (event) => {
    event.preventDefault();
    close();
  });
  dialog.addEventListener('keydown', (event) => {
    if (event.key !== 'Tab') return;
    const items = [...dialog.querySelectorAll(FOCUSABLE)].filter((el) => el.offsetParent !== null || el === document.activeElement);
    if (items.length === 0) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });
  // Enter in a single-line field runs the first action, as in a form.
  dialog.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && event.target.tagName === 'INPUT' && event.target.type !== 'checkbox' && event.target.type !== 'radio') {
      const primary = foot.querySelector('.btn-primary, .btn-danger');
      if (primary && !primary.disabled) {
        event.preventDefault();
        primary.click();
      }
    }
  });

  document.body.append(dialog);
  dialog.showModal();
  const firstField = dialog.querySelector('.dialog-body input, .dialog-body select, .dialog-body textarea, .dialog-body button');
  (firstField || foot.querySelector('button')).focus();
  return { close, element: dialog, showError };
}

/**
 * Shows a refused field's message (a 400's `field`: `base_url`, `models[0]`, …) under the
 * control of that name (or the group marked `data-field`) in `dialog`, and focuses it.
 * Returns false when the dialog has no such visible control (the caller shows it on top).
 */
export function showFieldError(dialog, err) {
  if (!err || !err.field) return false;
  const name = CSS.escape(String(err.field).replace(/[[.].*$/, ''));
  const control = dialog.querySelector(`.dialog-body [data-field="${name}"], .dialog-body [name="${name}"]`);
  if (!control || control.closest('[hidden]')) return false;
  const box = control.closest('[data-field]') || control.closest('.field') || control.parentElement;
  const id = `${control.id || name}-error`;
  const message = h('p', { class: 'field-error', role: 'alert', id, text: err.message });
  box.append(message);
  const input = control.matches('input, select, textarea') ? control : control.querySelector('input, select, textarea');
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    input.dataset.describedBefore = input.getAttribute('aria-describedby') || '';
    input.setAttribute('aria-describedby', `${input.dataset.describedBefore} ${id}`.trim());
    input.focus();
  }
  message.scrollIntoView({ block: 'nearest' });
  return true;
}

function clearFieldErrors(dialog) {
  dialog.querySelectorAll('.field-error').forEach((node) => node.remove());
  dialog.querySelectorAll('[aria-invalid="true"]').forEach((input) => {
    input.removeAttribute('aria-invalid');
    const before = input.dataset.describedBefore;
    if (before) input.setAttribute('aria-describedby', before);
    else input.removeAttribute('aria-describedby');
    delete input.dataset.describedBefore;
  });
}

/** Asks before something irreversible; resolves true when confirmed. */
export function confirmDialog({ title, message, confirmLabel, danger = true, run, extra }) {
  return new Promise((resolve) => {
    let confirmed = false;
    openDialog({
      title,
      body: extra ? h('div', {}, h('p', { text: message }), extra) : h('p', { text: message }),
      actions: [{
        label: confirmLabel,
        kind: danger ? 'danger' : 'primary',
        id: 'confirm',
        run: async () => {
          if (run) await run();
          confirmed = true;
        },
      }],
      onClose: () => resolve(confirmed),
    });
  });
}
