// The flags and rollout pages of the operations console (/ops/flags,
// /ops/rollout): the admin API with the operator's token, which /ops keeps
// in this tab's session storage. No inline script: the CSP allows this
// file only.
'use strict';
(() => {
  const page = document.body.dataset.page;
  if (page !== 'ops-flags' && page !== 'ops-rollout') return;
  const token = () => sessionStorage.getItem('trellis.ops');
  const $ = (s) => document.querySelector(s);
  const msg = (text) => { $('#delivery-msg').textContent = text; };
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  async function api(path, { method = 'GET', body } = {}) {
    const headers = { authorization: 'Bearer ' + token() };
    if (body) headers['content-type'] = 'application/json';
    const r = await fetch('/api/v1' + path, { method, headers, body: body ? JSON.stringify(body) : undefined });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.message || ('HTTP ' + r.status));
    return data;
  }
  if (!token()) {
    msg('Open the operations console (/ops) and enter the operator token first.');
    return;
  }

  async function flags() {
    let data;
    try { data = await api('/admin/flags'); } catch (e) { msg(e.message); return; }
    $('#flags-meta').textContent = 'version ' + data.version + ' · generation ' + data.generation +
      (data.healthy ? ' · flag file OK' : ' · flag file rejected: ' + data.last_error);
    const rows = $('#flags-rows');
    rows.replaceChildren();
    for (const f of data.flags) {
      const tr = el('tr');
      tr.append(el('td', f.key), el('td', f.description || ''));
      const td = el('td');
      const select = el('select');
      select.setAttribute('aria-label', 'Default variant of ' + f.key);
      for (const [name, value] of Object.entries(f.variants)) {
        const o = el('option', name + ' (' + JSON.stringify(value) + ')');
        o.value = name;
        o.selected = name === f.default_variant;
        select.append(o);
      }
      select.addEventListener('change', async () => {
        try {
          await api('/admin/flags/' + encodeURIComponent(f.key) + '/variant', { method: 'POST', body: { variant: select.value } });
          msg(f.key + ' now serves ' + select.value);
        } catch (e) { msg(e.message); }
        flags();
      });
      td.append(select);
      const state = el('button', f.state === 'ENABLED' ? 'Disable' : 'Enable', 'secondary');
      state.type = 'button';
      state.addEventListener('click', async () => {
        const next = f.state === 'ENABLED' ? 'DISABLED' : 'ENABLED';
        try { await api('/admin/flags/' + encodeURIComponent(f.key) + '/state', { method: 'POST', body: { state: next } }); msg(f.key + ' ' + next); } catch (e) { msg(e.message); }
        flags();
      });
      tr.append(td, el('td', f.state), el('td', f.targeting_rules), el('td'));
      tr.lastChild.append(state);
      rows.append(tr);
    }
  }

  async function rollout() {
    let s;
    try { s = await api('/admin/rollout'); } catch (e) {
      msg(e.message === 'no such route' ? 'No second version: set delivery.canary_url (gateway) or delivery.canary_version (one process).' : e.message);
      return;
    }
    $('#ro-strategy').textContent = s.strategy;
    $('#ro-phase').textContent = s.phase;
    $('#ro-weight').textContent = s.weight + '%';
    $('#ro-bar').value = s.weight;
    $('#ro-steps').textContent = s.steps.join(' → ') + ' every ' + (s.interval_ms / 1000) + ' s; success ≥ ' +
      (s.min_success_rate * 100).toFixed(1) + ' %, p99 ≤ ' + s.max_p99_ms + ' ms; failed checks in a row: ' + s.consecutive_failures;
    const rows = $('#ro-versions');
    rows.replaceChildren();
    for (const v of ['stable', 'canary']) {
      const n = s[v];
      const tr = el('tr');
      tr.append(el('td', v), el('td', n.requests), el('td', n.errors),
        el('td', (n.success_rate * 100).toFixed(2) + ' %'), el('td', n.p99_ms === null ? '–' : n.p99_ms.toFixed(0) + ' ms'));
      rows.append(tr);
    }
    const log = $('#ro-log');
    log.replaceChildren();
    for (const d of s.decisions.slice().reverse()) {
      log.append(el('li', (d.after_ms / 1000).toFixed(1) + ' s  ' + d.kind + '  ' + d.from + '% → ' + d.to + '%  ' + d.reason +
        '  (canary ' + d.canary.requests + ' req, ' + d.canary.errors + ' err)'));
    }
  }

  if (page === 'ops-flags') {
    flags();
  } else {
    for (const action of ['pause', 'resume', 'promote', 'abort']) {
      $('#ro-' + action).addEventListener('click', async () => {
        try { await api('/admin/rollout/' + action, { method: 'POST' }); msg(action + ': done'); } catch (e) { msg(e.message); }
        rollout();
      });
    }
    rollout();
    setInterval(rollout, 2000);
  }
})();
