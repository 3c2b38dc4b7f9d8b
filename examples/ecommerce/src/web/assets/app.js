// Trellis Tea: the one script of the storefront and the operations console.
// Everything here goes through the public JSON API under /api/v1 with the
// user's own bearer token, like any other client. Live updates are
// server-sent events read over fetch (EventSource cannot send the
// Authorization header).
'use strict';

document.documentElement.classList.remove('no-js');

const $ = (selector, root = document) => root.querySelector(selector);
const KEYS = { token: 'trellis.token', email: 'trellis.email', ops: 'trellis.ops', cart: 'trellis.cart' };

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = 'GET', body, token, idempotencyKey } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = 'Bearer ' + token;
  if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
  const res = await fetch('/api/v1' + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    throw new ApiError(res.status, data && data.error, (data && data.message) || ('HTTP ' + res.status));
  }
  return data;
}

// Reads a server-sent event stream; calls onEvent(name, data) per event.
// Resolves when the server ends the stream; rejects on HTTP errors.
async function stream(path, token, onEvent, signal) {
  const res = await fetch('/api/v1' + path, {
    headers: { accept: 'text/event-stream', authorization: 'Bearer ' + token },
    signal,
  });
  if (!res.ok) {
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    throw new ApiError(res.status, data && data.error, (data && data.message) || ('HTTP ' + res.status));
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const lines = [];
      for (const line of chunk.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) lines.push(line.slice(5).replace(/^ /, ''));
      }
      if (lines.length === 0) continue; // keep-alive comment
      let data = null;
      try { data = JSON.parse(lines.join('\n')); } catch (_) { continue; }
      onEvent(name, data);
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function money(cents) {
  const sign = cents < 0 ? '-' : '';
  const abs = Math.abs(cents);
  return sign + '$' + Math.floor(abs / 100) + '.' + String(abs % 100).padStart(2, '0');
}

// Builds an element: el('li', { class: 'x', dataset: { a: 1 } }, 'text', child).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(target, text, kind = '') {
  const node = typeof target === 'string' ? $(target) : target;
  if (!node) return;
  node.textContent = text;
  node.classList.remove('error', 'ok');
  if (kind) node.classList.add(kind);
}

const human = (name) => name ? name.charAt(0).toUpperCase() + name.slice(1).replace(/[-_]/g, ' ') : '';
// "ForcedOpen" -> "forced open"
const words = (name) => String(name).replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });

// ------------------------------------------------------------ session

const session = {
  get token() { return sessionStorage.getItem(KEYS.token); },
  get email() { return sessionStorage.getItem(KEYS.email); },
  set(token, email) {
    sessionStorage.setItem(KEYS.token, token);
    sessionStorage.setItem(KEYS.email, email);
    renderSession();
  },
  clear() {
    sessionStorage.removeItem(KEYS.token);
    sessionStorage.removeItem(KEYS.email);
    renderSession();
  },
};

function renderSession() {
  const box = $('#session');
  if (!box) return;
  box.replaceChildren();
  if (session.token) {
    box.append(
      el('span', { id: 'whoami' }, 'Signed in as ', el('strong', {}, session.email || 'you')),
      el('button', { type: 'button', id: 'logout', onclick: () => { session.clear(); renderAccount(); } }, 'Sign out'),
    );
  } else if (document.body.dataset.page !== 'shop') {
    box.append(el('a', { href: '/#account' }, 'Sign in'));
  }
  renderAccount();
}

function renderAccount() {
  const form = $('#login-form');
  if (!form) return;
  const signedIn = Boolean(session.token);
  form.hidden = signedIn;
  const who = $('#signed-in');
  who.hidden = !signedIn;
  who.textContent = signedIn ? 'Signed in as ' + (session.email || 'you') + '.' : '';
}

// A 401 means the token expired (they last an hour) or the server restarted
// with a new key: sign out and ask again.
function handleAuth(error, target) {
  if (error instanceof ApiError && error.status === 401) {
    session.clear();
    say(target, 'Your session ended; please sign in again.', 'error');
    return true;
  }
  return false;
}

// ------------------------------------------------------------ steps

const STEP_WORDS = {
  started: 'running…',
  succeeded: 'done',
  failed: 'failed',
  compensation_started: 'undoing…',
  compensated: 'undone',
  compensation_failed: 'undo failed, will retry',
};

// One list item per (saga, step), updated in place as events arrive.
function renderStep(list, data) {
  if (!data.step) return;
  const key = data.saga + '#' + data.index;
  let item = [...list.children].find((li) => li.dataset.key === key);
  if (!item) {
    item = el('li', { dataset: { key } });
    list.append(item);
  }
  item.dataset.state = data.event;
  item.dataset.step = data.step;
  const prefix = data.saga.endsWith('/validate') ? 'Validation: ' : '';
  // replaceChildren would print a null as "null": build through el().
  item.replaceChildren(...el('span', {},
    el('span', { class: 'what' }, prefix + human(data.step)),
    ' — ',
    el('span', { class: 'word' }, STEP_WORDS[data.event] || data.event),
    data.attempt > 1 ? ' (attempt ' + data.attempt + ')' : '',
    data.error && (data.event === 'failed' || data.event === 'compensation_failed')
      ? el('span', { class: 'err' }, data.error) : null,
  ).childNodes);
}

// ------------------------------------------------------------ shop

const cart = {
  load() {
    try { return JSON.parse(localStorage.getItem(KEYS.cart)) || {}; } catch (_) { return {}; }
  },
  save(lines) { localStorage.setItem(KEYS.cart, JSON.stringify(lines)); renderCart(); },
  add(sku, name, price) {
    const lines = cart.load();
    const line = lines[sku] || { name, price, quantity: 0 };
    line.quantity = Math.min(100, line.quantity + 1);
    lines[sku] = line;
    cart.save(lines);
  },
  change(sku, delta) {
    const lines = cart.load();
    if (!lines[sku]) return;
    lines[sku].quantity += delta;
    if (lines[sku].quantity <= 0) delete lines[sku];
    cart.save(lines);
  },
  clear() { cart.save({}); },
};

function renderCart() {
  const list = $('#cart-lines');
  if (!list) return;
  const lines = cart.load();
  const skus = Object.keys(lines);
  list.replaceChildren(...skus.map((sku) => {
    const l = lines[sku];
    return el('li', { dataset: { sku } },
      el('span', { class: 'name' }, l.name),
      el('button', { type: 'button', class: 'secondary', 'aria-label': 'One less ' + l.name, onclick: () => cart.change(sku, -1) }, '−'),
      el('span', { class: 'qty', 'aria-label': 'quantity' }, l.quantity),
      el('button', { type: 'button', class: 'secondary', 'aria-label': 'One more ' + l.name, onclick: () => cart.change(sku, 1) }, '+'),
      el('span', { class: 'line-total' }, money(l.price * l.quantity)),
    );
  }));
  $('#cart-empty').hidden = skus.length > 0;
  const total = skus.reduce((sum, sku) => sum + lines[sku].price * lines[sku].quantity, 0);
  $('#cart-total').textContent = money(total);
  $('#place').disabled = skus.length === 0;
}

async function signIn(register) {
  const email = $('#email').value.trim();
  const password = $('#password').value;
  const msg = '#account-msg';
  if (!$('#login-form').reportValidity()) return;
  try {
    if (register) {
      await api('/identity/register', { method: 'POST', body: { email, password } });
    }
    const login = await api('/identity/login', { method: 'POST', body: { email, password } });
    session.set(login.access_token, email);
    $('#password').value = '';
    say(msg, register ? 'Account created; you are signed in.' : 'Signed in.', 'ok');
  } catch (error) {
    say(msg, error.message, 'error');
  }
}

async function placeOrder() {
  const msg = '#cart-msg';
  const token = session.token;
  if (!token) {
    say(msg, 'Sign in (or create an account) to place your order.', 'error');
    $('#email').focus();
    return;
  }
  const lines = Object.entries(cart.load()).map(([sku, l]) => ({ sku, quantity: l.quantity }));
  if (lines.length === 0) return;
  const card = $('#card').value.trim();
  const button = $('#place');
  button.disabled = true;
  say(msg, 'Placing your order…');
  const panel = $('#progress');
  const list = $('#progress-steps');
  list.replaceChildren();
  panel.hidden = false;
  // Listen to this customer's sagas before placing, to show the new one move.
  const live = new AbortController();
  let sagaId = null;
  let ready;
  const isReady = new Promise((resolve) => { ready = resolve; });
  stream('/orders/events', token, (name, data) => {
    if (name === 'ready') ready();
    if (name !== 'step') return;
    if (!sagaId && data.index === 0 && data.event === 'started') sagaId = data.saga;
    if (data.saga === sagaId) renderStep(list, data);
  }, live.signal).catch(() => ready());
  await Promise.race([isReady, sleep(2000)]);
  try {
    // One key per order: a retried request answers the same order.
    const idempotencyKey = crypto.randomUUID ? crypto.randomUUID() : Date.now() + '-' + Math.random();
    const order = await api('/orders', { method: 'POST', token, body: { lines, card }, idempotencyKey });
    cart.clear();
    say(msg, 'Order placed.', 'ok');
    await sleep(300);
    location.assign('/orders/' + encodeURIComponent(order.order_id));
  } catch (error) {
    if (!handleAuth(error, msg)) say(msg, error.message, 'error');
    panel.hidden = true;
  } finally {
    live.abort();
    button.disabled = false;
  }
}

function initShop() {
  renderCart();
  document.addEventListener('click', (event) => {
    const button = event.target.closest('button.add');
    if (!button) return;
    cart.add(button.dataset.sku, button.dataset.name, Number(button.dataset.price));
    say('#cart-msg', button.dataset.name + ' added to the cart.', 'ok');
  });
  $('#login-form').addEventListener('submit', (event) => { event.preventDefault(); signIn(false); });
  $('#register').addEventListener('click', () => signIn(true));
  $('#checkout').addEventListener('submit', (event) => { event.preventDefault(); placeOrder(); });
}

// ------------------------------------------------------------ orders

async function initOrders() {
  const msg = '#orders-msg';
  if (!session.token) {
    say(msg, '');
    $('#orders-msg').append('Sign in on ', el('a', { href: '/#account' }, 'the shop'), ' to see your orders.');
    return;
  }
  try {
    const rows = await api('/orders', { token: session.token });
    if (rows.length === 0) say(msg, 'No orders yet.');
    $('#history').replaceChildren(...rows.map((o) => el('li', {},
      el('a', { href: '/orders/' + encodeURIComponent(o.order_id) }, o.order_id),
      el('span', { class: 'badge ' + o.status }, human(o.status.toLowerCase())),
      el('span', {}, money(o.total_cents) + ' · ' + o.items + (o.items === 1 ? ' item' : ' items')),
      o.reason ? el('span', { class: 'note' }, o.reason) : null,
    )));
  } catch (error) {
    if (!handleAuth(error, msg)) say(msg, error.message, 'error');
  }
}

const ORDER_WORDS = {
  PLACED: 'In progress',
  CONFIRMED: 'Confirmed',
  PENDING_VALIDATION: 'Pending validation: accepted while inventory was unavailable; it is checked and charged once inventory is back',
  REJECTED: 'Compensated: the order was rejected',
};

function initOrder() {
  const id = $('#order-id').dataset.id;
  const msg = '#order-msg';
  const status = $('#order-status');
  if (!session.token) {
    status.textContent = 'Sign in to follow this order.';
    $(msg).append(el('a', { href: '/#account' }, 'Sign in'));
    return;
  }
  const steps = {}; // step name -> last event (validation saga overrides)
  // Steps whose action failed: compensated afterwards (a failure is an
  // unknown outcome, so the saga also undoes that step, by key), the
  // milestone still says it failed rather than "Refunded".
  const failedSteps = new Set();
  let order = null;
  let sagaStatus = null;

  function milestone(name, state, text) {
    const li = $('.tracker [data-milestone="' + name + '"]');
    li.dataset.state = state;
    li.textContent = text;
  }

  function renderTracker() {
    const st = order && order.status;
    const phase = (step) => steps[step];
    const of = (step, done, active, undone, idle) => {
      const e = phase(step);
      if (e === 'succeeded') return ['done', done];
      if (failedSteps.has(step)) return ['failed', undone];
      if (e === 'compensated' || e === 'compensation_started') return ['undone', undone];
      if (e === 'started') return ['active', active];
      if (e === 'failed') return ['failed', undone];
      return ['', idle];
    };
    if (st === 'PENDING_VALIDATION') {
      milestone('reserved', 'skipped', 'Reservation deferred');
      milestone('charged', 'skipped', 'Not charged yet');
      milestone('confirmed', 'active', 'Pending validation');
      return;
    }
    milestone('reserved', ...of('reserve-inventory', 'Reserved', 'Reserving…', 'Reservation released', 'Reserved'));
    milestone('charged', ...of('charge-payment', 'Charged', 'Charging…', failedSteps.has('charge-payment') ? 'Payment failed' : 'Refunded', 'Charged'));
    if (st === 'CONFIRMED') milestone('confirmed', 'done', 'Confirmed');
    else if (st === 'REJECTED') milestone('confirmed', 'failed', 'Rejected');
    else milestone('confirmed', phase('confirm-order') === 'started' ? 'active' : '', 'Confirmed');
  }

  function renderStatus() {
    const st = order && order.status;
    let text = 'Loading…';
    if (sagaStatus === 'compensating') text = 'Compensating: undoing the steps already done';
    else if (sagaStatus === 'needs_attention') text = 'Needs attention: an operator is looking at this order';
    else if (st) text = ORDER_WORDS[st] || st;
    if (st === 'REJECTED' && order.reason) text += ' (' + order.reason + ')';
    status.textContent = text;
    status.dataset.status = st || '';
    status.dataset.saga = sagaStatus || '';
    const facts = $('#order-facts');
    if (order) {
      facts.replaceChildren(
        el('dt', {}, 'Total'), el('dd', {}, money(order.total_cents)),
        el('dt', {}, 'Items'), el('dd', {}, order.items),
        el('dt', {}, 'Status'), el('dd', {}, el('span', { class: 'badge ' + st }, human(st.toLowerCase()))),
      );
    }
    renderTracker();
  }

  let attempts = 0;
  async function follow() {
    while (attempts < 30) {
      attempts += 1;
      $('#steps').replaceChildren();
      try {
        await stream('/orders/' + encodeURIComponent(id) + '/events', session.token, (name, data) => {
          if (name === 'step') {
            renderStep($('#steps'), data);
            if (data.step) steps[data.step] = data.event;
            if (data.step && data.event === 'failed') failedSteps.add(data.step);
            if (data.status) sagaStatus = data.status;
            renderStatus();
          } else if (name === 'saga') {
            sagaStatus = data.status;
            renderStatus();
          } else if (name === 'order') {
            if (data) order = data;
            renderStatus();
          } else if (name === 'lagged') {
            throw new Error('lagged');
          }
        });
      } catch (error) {
        if (handleAuth(error, msg)) return;
        if (error instanceof ApiError && error.status === 404) {
          status.textContent = 'No such order (or it is not yours).';
          return;
        }
      }
      await sleep(2000);
    }
  }
  follow();
}

// ------------------------------------------------------------ ops

function initOps() {
  const form = $('#ops-login');
  const input = $('#ops-token');
  const consoleBox = $('#console');
  let live = null;
  let points = [];

  const token = () => sessionStorage.getItem(KEYS.ops);

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEYS.ops, input.value.trim());
    input.value = '';
    open();
  });
  $('#ops-logout').addEventListener('click', () => {
    sessionStorage.removeItem(KEYS.ops);
    if (live) live.abort();
    consoleBox.hidden = true;
    $('#ops-ask').hidden = false;
    $('#ops-logout').hidden = true;
    say('#ops-msg', 'Token forgotten.');
  });

  function log(text) {
    const list = $('#event-log');
    list.prepend(el('li', {}, clock(Date.now()) + '  ' + text));
    while (list.children.length > 100) list.lastChild.remove();
  }

  async function call(path, body) {
    try {
      return await api(path, { method: 'POST', token: token(), body });
    } catch (error) {
      say('#ops-msg', error.message, 'error');
      return null;
    }
  }

  // ---- rendering
  function renderHealth(health) {
    $('#health').replaceChildren(...Object.entries(health).map(([group, report]) => el('div', { class: 'card', dataset: { group } },
      el('h3', {}, '/' + group, el('span', { class: 'badge ' + report.status }, report.status)),
      el('ul', {}, ...Object.entries(report.checks || {}).map(([name, c]) => el('li', {},
        name + ': ', el('span', { class: 'badge ' + c.status }, c.status), ' ' + c.duration_ms + ' ms',
        c.error ? el('span', { class: 'err' }, ' ' + c.error) : null))),
    )));
  }

  function renderBreakers(breakers) {
    $('#breakers').replaceChildren(...breakers.map((b) => el('div', { class: 'card', dataset: { breaker: b.name, state: b.state } },
      el('h3', {}, b.name, el('span', { class: 'badge ' + b.state }, human(b.state))),
      el('p', {}, 'calls ' + b.calls + ' · failed ' + b.failed_calls + ' · slow ' + b.slow_calls + ' · rejected ' + b.rejected_calls +
        (b.failure_rate == null ? '' : ' · failure rate ' + b.failure_rate.toFixed(0) + '%')),
      b.transitions.length ? el('ul', {}, ...b.transitions.slice(0, 5).map((t) =>
        el('li', {}, clock(t.at_ms) + ' ' + t.from + ' → ' + t.to + ' (' + t.reason + ')'))) : el('p', { class: 'note' }, 'No transitions yet.'),
    )));
  }

  function renderBulkheads(bulkheads) {
    $('#bulkheads').replaceChildren(...bulkheads.map((b) => el('div', { class: 'card', dataset: { bulkhead: b.name } },
      el('h3', {}, 'Bulkhead ' + b.name),
      el('p', {}, b.in_flight + ' of ' + b.max_concurrent + ' slots in use · ' + b.waiting + ' waiting'),
      el('meter', { min: 0, max: b.max_concurrent, value: b.in_flight, 'aria-label': b.name + ' bulkhead usage' }),
    )));
  }

  function renderLimiters(limiters) {
    $('#limiters').replaceChildren(...(limiters.length ? limiters.map((l) => el('div', { class: 'card', dataset: { limiter: l.name } },
      el('h3', {}, 'Rate limiter ' + l.name),
      el('p', {}, (l.burst - l.available) + ' of ' + l.burst + ' burst permits in use (' + l.available + ' free now)'),
      el('meter', { min: 0, max: l.burst, value: l.burst - l.available, 'aria-label': l.name + ' rate limiter usage' }),
    )) : [el('p', { class: 'note' }, 'No rate limiter configured.')]));
  }

  function renderProjections(projections) {
    $('#projections').replaceChildren(...projections.map((p) => el('div', { class: 'card', dataset: { projection: p.name } },
      el('h3', {}, p.name, el('span', { class: 'badge ' + (p.state === 'running' ? 'up' : 'down') }, p.state)),
      el('p', {}, 'position ' + p.position + ' of ' + p.head + ' · lag ' + p.lag + ' events' +
        (p.seconds_behind == null ? '' : ' · ' + p.seconds_behind.toFixed(1) + ' s behind')),
      p.error ? el('p', { class: 'err' }, p.error) : null,
    )));
  }

  let editing = false;
  function renderFaults(faults) {
    const byName = Object.fromEntries(faults.map((f) => [f.service, f]));
    const pay = byName.payments && byName.payments.config;
    const inv = byName.inventory && byName.inventory.config;
    if (!editing && pay) {
      const down = pay.enabled && pay.error_probability >= 1;
      $('#pay-down').checked = down;
      $('#pay-fail').value = down ? 100 : Math.round((pay.enabled ? pay.error_probability : 0) * 100);
      $('#pay-fail').disabled = down;
      $('#pay-fail-out').textContent = $('#pay-fail').value + '%';
    }
    if (!editing && inv) {
      const latency = inv.enabled && inv.latency_probability > 0 ? parseDuration(inv.latency) : 0;
      $('#inv-latency').value = latency;
      $('#inv-latency-out').textContent = latency + ' ms';
      $('#inv-fail').value = Math.round((inv.enabled ? inv.error_probability : 0) * 100);
      $('#inv-fail-out').textContent = $('#inv-fail').value + '%';
    }
    $('#faults-now').textContent = 'Injected so far: ' + faults.map((f) =>
      f.service + ' ' + f.injected.errors + ' errors, ' + f.injected.latency + ' delays').join('; ');
  }

  function parseDuration(text) {
    const m = /^([\d.]+)\s*(ns|us|µs|ms|s|m|h)$/.exec(String(text).trim());
    if (!m) return 0;
    const factor = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2]];
    return Math.round(Number(m[1]) * factor);
  }

  let sagaTimer = null;
  function refreshSagasSoon() {
    if (sagaTimer) return;
    sagaTimer = setTimeout(async () => { sagaTimer = null; await refreshSagas(); }, 500);
  }

  async function refreshSagas() {
    let data;
    try { data = await api('/admin/sagas', { token: token() }); } catch (error) { return; }
    const c = data.counts;
    $('#saga-counts').replaceChildren(...Object.entries(c).map(([status, n]) =>
      el('span', { class: 'badge ' + status, dataset: { count: status } }, human(status) + ' ' + n)).flatMap((b) => [b, ' ']));
    const rows = [];
    for (const [status, sagas] of Object.entries(data.sagas)) {
      for (const s of sagas) {
        rows.push(el('div', { class: 'card saga', dataset: { saga: s.id, status } },
          el('h3', {}, el('span', { class: 'mono' }, s.id), el('span', { class: 'badge ' + status }, human(status))),
          s.error ? el('p', { class: 'err' }, s.error) : null,
          s.failed_step ? el('p', {}, 'failed step: ' + s.failed_step) : null,
          traceLink(s),
          el('div', { class: 'row' },
            status === 'needs_attention' ? el('button', { type: 'button', onclick: () => sagaAction('retry', s.id) }, 'Retry compensation') : null,
            status === 'running' ? el('button', { type: 'button', class: 'secondary', onclick: () => sagaAction('compensate', s.id) }, 'Compensate') : null,
          ),
        ));
      }
    }
    $('#saga-list').replaceChildren(...(rows.length ? rows : [el('p', { class: 'note' }, 'No saga is in flight or needs attention.')]));
    refreshBusiness();
  }

  function traceLink(row) {
    if (row.trace_url) return el('a', { href: row.trace_url, target: '_blank', rel: 'noopener' }, 'trace ' + row.trace_id.slice(0, 8));
    return row.trace_id ? el('span', { class: 'mono' }, 'trace ' + row.trace_id.slice(0, 8)) : null;
  }

  async function refreshBusiness() {
    let data;
    try { data = await api('/admin/business', { token: token() }); } catch (error) { return; }
    const b = data.business;
    $('#business').replaceChildren(
      el('p', {}, ...Object.entries(b.orders).flatMap(([outcome, n]) => [
        el('span', { class: 'badge ' + outcome, dataset: { outcome } }, human(outcome) + ' ' + n + ' (' + money(b.value_cents[outcome] || 0) + ')'), ' '])),
      el('p', { dataset: { pending: String(b.pending_validation) } }, 'Pending validation: ' + b.pending_validation),
      el('p', {}, 'Step failures: ' + (Object.entries(b.step_failures).map(([s, n]) => s + ' ' + n).join(', ') || 'none')),
    );
    const rows = [];
    for (const s of b.recent_sagas) {
      rows.push(el('div', { class: 'card saga', dataset: { saga: s.id } },
        el('span', { class: 'mono' }, s.id), ' ', el('span', { class: 'badge ' + s.outcome }, human(s.outcome)),
        ' ' + (s.seconds * 1000).toFixed(0) + ' ms ', traceLink(s)));
    }
    for (const r of data.slow_requests) {
      rows.push(el('div', { class: 'card slow' },
        el('span', { class: 'mono' }, r.method + ' ' + r.path), ' ' + r.status + ' in ' + r.ms + ' ms ', traceLink(r)));
    }
    $('#traces').replaceChildren(...(rows.length ? rows : [el('p', { class: 'note' }, 'No saga has ended here yet.')]));
  }

  async function sagaAction(action, id) {
    const result = await call('/admin/sagas/' + action, action === 'compensate' ? { id, reason: 'compensated from the console' } : { id });
    if (result) {
      say('#ops-msg', 'Saga ' + id + ' is now ' + result.status + '.', 'ok');
      refreshSagas();
    }
  }

  // ---- chart
  function draw() {
    const canvas = $('#chart');
    if (!canvas || consoleBox.hidden) return;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const g = canvas.getContext('2d');
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    // Show the last 5 minutes, or less while the system is younger, so a
    // fresh system's first seconds are not a sliver at the right edge.
    const first = points.findIndex((p) => p.requests > 0);
    const active = first < 0 ? 0 : points.length - first;
    const n = Math.min(300, Math.max(60, active + 5));
    const pad = { l: 8, r: 8, t: 22, b: 18 };
    const pts = points.slice(-n);
    const maxR = Math.max(1, ...pts.map((p) => p.requests));
    const maxL = Math.max(1, ...pts.map((p) => p.p99_ms));
    const x = (i) => pad.l + (i + n - pts.length) * (w - pad.l - pad.r) / n;
    const bw = Math.max(1, (w - pad.l - pad.r) / n - 0.5);
    const yR = (v) => h - pad.b - v / maxR * (h - pad.t - pad.b);
    const yL = (v) => h - pad.b - v / maxL * (h - pad.t - pad.b);
    g.fillStyle = '#8fb8ab';
    pts.forEach((p, i) => { if (p.requests) g.fillRect(x(i), yR(p.requests), bw, h - pad.b - yR(p.requests)); });
    for (const [key, color] of [['p50_ms', '#2563eb'], ['p99_ms', '#d97706']]) {
      g.strokeStyle = color;
      g.lineWidth = 1.5;
      g.beginPath();
      let drawing = false;
      pts.forEach((p, i) => {
        if (!p.requests) { drawing = false; return; }
        const px = x(i) + bw / 2;
        if (drawing) g.lineTo(px, yL(p[key])); else g.moveTo(px, yL(p[key]));
        drawing = true;
      });
      g.stroke();
    }
    g.strokeStyle = '#d9dfe2';
    g.beginPath();
    g.moveTo(pad.l, h - pad.b + 0.5);
    g.lineTo(w - pad.r, h - pad.b + 0.5);
    g.stroke();
    g.fillStyle = '#5b676d';
    g.font = '12px system-ui, sans-serif';
    g.textAlign = 'left';
    g.fillText(maxR + ' req/s', pad.l, 14);
    g.fillText(n >= 300 ? '5 min ago' : n + ' s ago', pad.l, h - 4);
    g.textAlign = 'right';
    g.fillText(maxL.toFixed(maxL < 10 ? 2 : 0) + ' ms', w - pad.r, 14);
    g.fillText('now', w - pad.r, h - 4);
  }

  function pushPoint(point) {
    if (!point) return;
    if (points.length && points[points.length - 1].t >= point.t) return;
    points.push(point);
    if (points.length > 300) points = points.slice(-300);
    $('#traffic-now').textContent = 'last second: ' + point.requests + ' req, p50 ' + point.p50_ms.toFixed(1) + ' ms, p99 ' + point.p99_ms.toFixed(1) + ' ms';
    draw();
  }

  // ---- controls
  function payFaults() {
    const down = $('#pay-down').checked;
    const fail = Number($('#pay-fail').value) / 100;
    $('#pay-fail').disabled = down;
    return call('/admin/payments/faults', { enabled: down || fail > 0, error_probability: down ? 1 : fail });
  }
  function invFaults() {
    const latency = Number($('#inv-latency').value);
    const fail = Number($('#inv-fail').value) / 100;
    return call('/admin/inventory/faults', {
      enabled: latency > 0 || fail > 0,
      latency_probability: latency > 0 ? 1 : 0,
      latency: latency + 'ms',
      error_probability: fail,
    });
  }
  const editingWhile = (fn) => async () => { editing = true; try { const r = await fn(); if (r) log('drill updated'); } finally { editing = false; } };
  $('#pay-down').addEventListener('change', editingWhile(payFaults));
  $('#pay-fail').addEventListener('input', () => { editing = true; $('#pay-fail-out').textContent = $('#pay-fail').value + '%'; });
  $('#pay-fail').addEventListener('change', editingWhile(payFaults));
  $('#inv-latency').addEventListener('input', () => { editing = true; $('#inv-latency-out').textContent = $('#inv-latency').value + ' ms'; });
  $('#inv-latency').addEventListener('change', editingWhile(invFaults));
  $('#inv-fail').addEventListener('input', () => { editing = true; $('#inv-fail-out').textContent = $('#inv-fail').value + '%'; });
  $('#inv-fail').addEventListener('change', editingWhile(invFaults));
  $('#inv-open').addEventListener('click', async () => {
    const r = await call('/admin/inventory/breaker', { open: true });
    if (r) say('#ops-msg', 'Inventory breaker is ' + words(r.state) + '.', 'ok');
  });
  $('#inv-close').addEventListener('click', async () => {
    const r = await call('/admin/inventory/breaker', { open: false });
    if (r) say('#ops-msg', 'Inventory breaker is ' + words(r.state) + '; ' + r.validated.length + ' pending order(s) validated.', 'ok');
  });
  window.addEventListener('resize', draw);

  async function open() {
    if (!token()) return;
    say('#ops-msg', 'Loading…');
    let status;
    try {
      status = await api('/admin/status', { token: token() });
    } catch (error) {
      const text = error.status === 403 ? 'This token lacks scope ops:admin.'
        : error.status === 401 ? 'This token is invalid or expired.' : error.message;
      say('#ops-msg', text, 'error');
      sessionStorage.removeItem(KEYS.ops);
      return;
    }
    say('#ops-msg', 'Connected as an operator. Updates arrive live.', 'ok');
    consoleBox.hidden = false;
    $('#ops-ask').hidden = true;
    $('#ops-logout').hidden = false;
    renderHealth(status.health);
    renderBreakers(status.breakers);
    renderBulkheads(status.bulkheads);
    renderLimiters(status.rate_limiters);
    renderProjections(status.projections);
    renderFaults(status.faults);
    try { points = await api('/admin/traffic', { token: token() }); } catch (_) { points = []; }
    draw();
    refreshSagas();
    if (live) live.abort();
    live = new AbortController();
    const signal = live.signal;
    (async () => {
      while (!signal.aborted) {
        try {
          await stream('/admin/events', token(), (name, data) => {
            if (name === 'tick') {
              pushPoint(data.point);
              renderBreakers(data.breakers);
              renderBulkheads(data.bulkheads);
              renderLimiters(data.rate_limiters);
              renderProjections(data.projections);
              renderFaults(data.faults);
            } else if (name === 'health') {
              renderHealth(data);
            } else if (name === 'breaker') {
              log('breaker ' + data.breaker + ': ' + data.from + ' → ' + data.to + ' (' + data.reason + ')');
              const card = $('#breakers [data-breaker="' + data.breaker + '"]');
              if (card) {
                card.dataset.state = data.to;
                const badge = $('.badge', card);
                badge.className = 'badge ' + data.to;
                badge.textContent = human(data.to);
              }
            } else if (name === 'saga') {
              if (data.step) log('saga ' + data.saga + ': ' + data.step + ' ' + data.event + (data.error ? ' — ' + data.error : ''));
              else log('saga ' + data.saga + ': ' + data.status);
              refreshSagasSoon();
            } else if (name === 'lagged') {
              refreshSagasSoon();
            }
          }, signal);
        } catch (error) {
          if (signal.aborted) return;
          if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
            say('#ops-msg', 'The token stopped working; paste a new one.', 'error');
            return;
          }
        }
        await sleep(2000);
      }
    })();
  }

  open();
}

// ------------------------------------------------------------ start

document.addEventListener('DOMContentLoaded', () => {
  renderSession();
  const page = document.body.dataset.page;
  if (page === 'shop') initShop();
  else if (page === 'orders') initOrders();
  else if (page === 'order') initOrder();
  else if (page === 'ops') initOps();
});
