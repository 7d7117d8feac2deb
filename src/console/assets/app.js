// Annals admin console: a single page over the public API. No framework, no build step.
// tests/console.rs drives it by the element ids and data attributes used here, so keep
// them stable.
'use strict';

(() => {
  const STORAGE_KEY = 'annals.apiKey';
  const ROLE_RANK = { READER: 1, WRITER: 2, ADMIN: 3 };
  const POLL_MS = 2000;
  const STREAM_PAGE_SIZE = 20;
  const STREAMS_PAGE_SIZE = 20;
  const TAIL_MAX = 500;
  const PLOT_SECONDS = 300;
  const PALETTE = ['#1d5bbf', '#b45309', '#0f766e', '#7e3fb0', '#be123c', '#4b5563', '#15803d', '#a16207'];

  window.annalsConsole = Object.freeze({ version: 1 });

  const session = { viewer: null, view: null, listening: false };

  // ---------------------------------------------------------------- DOM helpers

  const $ = (selector, root = document) => root.querySelector(selector);

  // Builds an element. Children are nodes or strings (always text nodes, never HTML).
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (value == null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'on') {
        for (const [type, handler] of Object.entries(value)) node.addEventListener(type, handler);
      } else node.setAttribute(name, value === true ? '' : String(value));
    }
    node.append(...children.flat(Infinity).filter((c) => c != null && c !== false));
    return node;
  }

  function button(label, props = {}) {
    return el('button', { type: 'button', class: 'button', ...props }, label);
  }

  function link(href, text, props = {}) {
    return el('a', { href, ...props }, text);
  }

  function streamHref(streamId) {
    return `#/streams/${encodeURIComponent(streamId)}`;
  }

  function eventHref(position) {
    return `#/events/${position}`;
  }

  // Moves focus to a non-control (a heading, the main region) for screen readers; the
  // temporary tabindex goes away with the focus, so the element never becomes a Tab stop.
  function focusQuietly(element) {
    if (!element) return;
    element.setAttribute('tabindex', '-1');
    element.addEventListener('blur', () => element.removeAttribute('tabindex'), { once: true });
    element.focus({ preventScroll: true });
  }

  function mono(text, props = {}) {
    return el('span', { class: 'mono', ...props }, text);
  }

  function badge(text, tone) {
    return el('span', { class: `badge badge-${tone}` }, text);
  }

  function timeEl(iso, text) {
    if (!iso) return el('span', { class: 'muted' }, '—');
    return el('time', { datetime: iso, title: iso }, text ?? fmt.time(iso));
  }

  function section(title, props = {}, ...children) {
    const headingId = props.id ? `${props.id}-title` : null;
    return el('section', { class: 'panel', 'aria-labelledby': headingId, ...props },
      el('h2', { id: headingId }, title), ...children);
  }

  // ---------------------------------------------------------------- formatting

  const STATE_TONES = {
    RUNNING: 'ok', up: 'ok', ready: 'ok', closed: 'ok',
    PAUSED: 'warn', degraded: 'warn', 'half-open': 'warn',
    REBUILDING: 'info',
    FAILED: 'bad', down: 'bad', unavailable: 'bad', open: 'bad',
  };

  const fmt = {
    // Amounts are decimal strings that may exceed 2^53: group the digits as text.
    int(value) {
      if (value == null) return '—';
      return String(value).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
    },
    rate(value) {
      if (value == null || Number.isNaN(value)) return '—';
      return value >= 100 ? Math.round(value).toLocaleString('en') : value.toFixed(1);
    },
    time(iso) {
      if (!iso) return '—';
      return iso.replace('T', ' ').replace(/\.\d+/, '').replace(/(Z|\+00:00)$/, ' UTC');
    },
    // Time of day with milliseconds, for the live tail where the date is today's.
    clock(iso) {
      const match = /T(\d\d:\d\d:\d\d(?:\.\d{1,3})?)/.exec(iso || '');
      return match ? match[1] : fmt.time(iso);
    },
    ago(iso) {
      const seconds = (Date.now() - Date.parse(iso)) / 1000;
      if (!Number.isFinite(seconds)) return '—';
      return `${fmt.duration(Math.max(0, seconds))} ago`;
    },
    duration(seconds) {
      if (seconds < 60) return `${Math.round(seconds)} s`;
      if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
      if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
      return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
    },
    json(value) {
      return JSON.stringify(value, null, 2);
    },
  };

  function stateBadge(state) {
    return badge(state, STATE_TONES[state] || 'neutral');
  }

  function commaList(text) {
    const items = text.split(',').map((s) => s.trim()).filter(Boolean);
    return items.length ? items : null;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(code, message) {
      super(message);
      this.name = 'ApiError';
      this.code = code;
    }
  }

  function storedKey() {
    return sessionStorage.getItem(STORAGE_KEY);
  }

  function authHeaders(extra = {}) {
    const key = storedKey();
    return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
  }

  function firstError(body) {
    const error = body && Array.isArray(body.errors) ? body.errors[0] : null;
    if (!error) return null;
    return new ApiError(error.extensions?.code || 'ERROR', error.message || 'the request failed');
  }

  function httpError(response) {
    return new ApiError(`HTTP_${response.status}`, response.statusText || 'unexpected answer from the server');
  }

  async function send(url, init) {
    try {
      return await fetch(url, init);
    } catch (cause) {
      throw new ApiError('NETWORK_ERROR', `the server could not be reached (${cause.message})`);
    }
  }

  async function gql(query, variables = {}) {
    const response = await send('/graphql', {
      method: 'POST',
      headers: authHeaders({ 'Content-Type': 'application/json' }),
      body: JSON.stringify({ query, variables }),
    });
    const body = await response.json().catch(() => null);
    const error = firstError(body);
    if (error) throw error;
    if (!response.ok || !body || !body.data) throw httpError(response);
    return body.data;
  }

  // ---------------------------------------------------------------- error banner

  const banner = { source: null };

  function showError(error, source = 'view') {
    const code = error instanceof ApiError ? error.code : 'CLIENT_ERROR';
    const message = error instanceof Error ? error.message : String(error);
    if (!(error instanceof ApiError)) console.warn('annals console:', error);
    if (code === 'UNAUTHENTICATED' && session.viewer) {
      signOut(`${code}: ${message}`);
      return;
    }
    const node = $('#error-banner');
    node.replaceChildren(
      el('strong', { class: 'error-code' }, code),
      el('span', { class: 'error-message' }, message),
      button('Dismiss', { class: 'button button-small banner-close', on: { click: () => clearError() } }),
    );
    node.hidden = false;
    banner.source = source;
  }

  // A source only clears its own error, so one poll succeeding does not hide another's failure.
  function clearError(source) {
    if (source && banner.source !== source) return;
    const node = $('#error-banner');
    node.hidden = true;
    node.replaceChildren();
    banner.source = null;
  }

  // ---------------------------------------------------------------- confirmation dialog

  function confirmAction({ title, message, confirmLabel }) {
    const dialog = $('#confirm');
    $('#confirm-title').textContent = title;
    $('#confirm-message').textContent = message;
    $('#confirm-ok').textContent = confirmLabel;
    return new Promise((resolve) => {
      const listeners = new AbortController();
      const finish = (answer) => {
        listeners.abort();
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const options = { signal: listeners.signal };
      $('#confirm-ok').addEventListener('click', () => finish(true), options);
      $('#confirm-cancel').addEventListener('click', () => finish(false), options);
      dialog.addEventListener('close', () => finish(false), options);
      dialog.showModal();
      $('#confirm-cancel').focus();
    });
  }

  // ---------------------------------------------------------------- views and routing

  let pollCounter = 0;

  function createViewContext(root) {
    const cleanups = [];
    const ctx = {
      alive: true,
      root,
      onLeave(fn) {
        cleanups.push(fn);
      },
      leave() {
        ctx.alive = false;
        for (const fn of cleanups.splice(0)) fn();
      },
      // Runs a task whose failure goes to the banner, unless the view was left meanwhile.
      async run(task, source) {
        try {
          return await task();
        } catch (error) {
          if (ctx.alive) showError(error, source);
          return undefined;
        }
      },
      // Repeats a task every POLL_MS while the view is shown and the page visible; the next
      // run is scheduled after the previous one ends, so slow answers never pile up.
      poll(task) {
        const source = `poll-${++pollCounter}`;
        let timer = null;
        const tick = async () => {
          if (!ctx.alive) return;
          if (!document.hidden) {
            try {
              await task();
              if (ctx.alive) clearError(source);
            } catch (error) {
              if (ctx.alive) showError(error, source);
            }
          }
          if (ctx.alive) timer = setTimeout(tick, POLL_MS);
        };
        tick();
        cleanups.push(() => clearTimeout(timer));
      },
    };
    return ctx;
  }

  const ROUTES = [
    { pattern: /^\/overview$/, nav: 'overview', view: overviewView },
    { pattern: /^\/streams$/, nav: 'streams', view: streamsView },
    { pattern: /^\/streams\/(.+)$/, nav: 'streams', view: streamView },
    { pattern: /^\/events\/id\/([^/]+)$/, nav: 'streams', view: (ctx, id) => eventView(ctx, { id }) },
    { pattern: /^\/events\/(\d+)$/, nav: 'streams', view: (ctx, position) => eventView(ctx, { position }) },
    { pattern: /^\/tail$/, nav: 'tail', view: tailView },
    { pattern: /^\/projections$/, nav: 'projections', view: projectionsView },
    { pattern: /^\/audit$/, nav: 'audit', view: auditView },
  ];

  function matchRoute(path) {
    for (const route of ROUTES) {
      const match = route.pattern.exec(path);
      if (!match) continue;
      try {
        return { route, params: match.slice(1).map(decodeURIComponent) };
      } catch {
        return null;
      }
    }
    return null;
  }

  function leaveView() {
    const dialog = $('#confirm');
    if (dialog.open) dialog.close();
    if (session.view) session.view.leave();
    session.view = null;
  }

  function route(moveFocus = false) {
    if (!session.viewer) return;
    const path = location.hash.replace(/^#/, '');
    if (path === '' || path === '/') {
      location.replace('#/overview');
      return;
    }
    leaveView();
    clearError();
    const root = $('#view');
    root.replaceChildren();
    const match = matchRoute(path);
    markNav(match ? match.route.nav : null);
    const ctx = createViewContext(root);
    session.view = ctx;
    if (match) match.route.view(ctx, ...match.params);
    else notFoundView(ctx, path);
    if (moveFocus) {
      window.scrollTo(0, 0);
      focusQuietly($('h1', root));
    }
  }

  function markNav(active) {
    for (const a of document.querySelectorAll('#topnav a[data-nav]')) {
      if (a.dataset.nav === active) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  // The view's single h1; also names the browser tab.
  function pageHeader(ctx, title, { crumbs = [] } = {}) {
    document.title = `${title} · Annals`;
    const h1 = el('h1', {}, title);
    const trail = crumbs.length
      ? el('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' },
        el('ol', {}, crumbs.map(([href, text]) => el('li', {}, link(href, text)))))
      : null;
    ctx.root.append(el('div', { class: 'page-header' }, trail, h1));
    return { h1, setTitle(text) { h1.textContent = text; document.title = `${text} · Annals`; } };
  }

  function notFoundView(ctx, path) {
    pageHeader(ctx, 'Page not found');
    ctx.root.append(el('p', {}, 'Nothing lives at ', mono(path), '. ', link('#/overview', 'Go to the overview'), '.'));
  }

  // ---------------------------------------------------------------- keyed lists and tables

  // Keeps parent's children in step with items, matched by key: nodes are reused, so focus
  // and open <details> survive the 2 s refresh.
  function syncChildren(parent, items, keyOf, create, update) {
    const existing = new Map();
    for (const child of parent.children) existing.set(child.dataset.key, child);
    let previous = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      const expected = previous ? previous.nextElementSibling : parent.firstElementChild;
      if (node !== expected) parent.insertBefore(node, expected);
      previous = node;
    }
    for (const stale of existing.values()) stale.remove();
  }

  const cellSignatures = new WeakMap();

  // A cell is a string/number (text), {text, class}, or {build, sig, class}: built cells
  // are only rebuilt when their sig changes, so their buttons keep focus.
  function fillRow(row, cells) {
    cells.forEach((spec, index) => {
      const cell = spec !== null && typeof spec === 'object' ? spec : { text: spec };
      const td = row.cells[index] || row.appendChild(document.createElement('td'));
      const className = cell.class || '';
      if (td.className !== className) td.className = className;
      const signature = cell.build ? `build:${cell.sig}` : `text:${cell.text ?? ''}`;
      if (cellSignatures.get(td) === signature) return;
      cellSignatures.set(td, signature);
      if (cell.build) td.replaceChildren(cell.build());
      else td.textContent = cell.text ?? '';
    });
    while (row.cells.length > cells.length) row.deleteCell(-1);
  }

  function syncTable(tbody, items, keyOf, cellsOf, decorate) {
    syncChildren(tbody, items, keyOf, () => document.createElement('tr'), (row, item) => {
      fillRow(row, cellsOf(item));
      if (decorate) decorate(row, item);
    });
  }

  function dataTable(columns, { caption, ...props } = {}) {
    const tbody = el('tbody');
    const table = el('table', { class: 'data-table', ...props },
      caption ? el('caption', { class: 'visually-hidden' }, caption) : null,
      el('thead', {}, el('tr', {}, columns.map((column) => {
        const [label, className] = Array.isArray(column) ? column : [column, null];
        return el('th', { scope: 'col', class: className }, label);
      }))),
      tbody);
    return { table, tbody };
  }

  function emptyNote(text) {
    return el('p', { class: 'empty', hidden: true }, text);
  }

  // ---------------------------------------------------------------- plots

  // uPlot draws at a fixed pixel size: it is resized with the window and rebuilt when its
  // set of series changes (a projection appearing). data-points tells tests a redraw happened.
  function createTimePlot(ctx, container, { yLabel, height = 240 }) {
    let plot = null;
    let seriesKey = '';
    const width = () => Math.max(320, container.clientWidth);

    function options(series) {
      const axis = { stroke: '#3d4a5c', grid: { stroke: '#e6e9ee', width: 1 }, ticks: { stroke: '#d0d5dc', width: 1 } };
      return {
        width: width(),
        height,
        // Rates and lags are never negative: anchor the y axis at zero so small wobbles stay small.
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        cursor: { drag: { x: false, y: false } },
        series: [
          { label: 'Time' },
          ...series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: 2,
            points: { show: false },
            value: (u, v) => (v == null ? '—' : fmt.rate(v)),
          })),
        ],
        // Samples are one per second: never tick the time axis below a second.
        axes: [{ ...axis, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600] }, { ...axis, label: yLabel, size: 64 }],
      };
    }

    function update(xs, series) {
      if (typeof window.uPlot !== 'function') {
        container.textContent = 'The plot library did not load.';
        return;
      }
      const data = [xs, ...series.map((s) => s.values)];
      const key = series.map((s) => s.label).join('\n');
      if (!plot || key !== seriesKey) {
        if (plot) plot.destroy();
        seriesKey = key;
        plot = new window.uPlot(options(series), data, container);
      } else {
        plot.setData(data);
      }
      container.setAttribute('data-points', String(xs.length));
    }

    let resizeTimer = null;
    const onResize = () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => plot && plot.setSize({ width: width(), height }), 100);
    };
    window.addEventListener('resize', onResize);
    ctx.onLeave(() => {
      window.removeEventListener('resize', onResize);
      clearTimeout(resizeTimer);
      if (plot) plot.destroy();
      plot = null;
    });
    return { update };
  }

  function sampleTimes(samples) {
    return samples.map((s) => Date.parse(s.at) / 1000);
  }

  // ---------------------------------------------------------------- overview

  const OVERVIEW_QUERY = `query Overview($seconds: Int) {
    overview(lastSeconds: $seconds) {
      head startedAt events commits meanCommitEvents
      samples { at head eventsPerSecond commitsPerSecond }
    }
  }`;

  function statTile(label, id, { monospace = false } = {}) {
    const value = el('dd', { id, class: monospace ? 'mono' : null }, '—');
    const note = el('span', { class: 'stat-note' });
    return { node: el('div', { class: 'stat' }, el('dt', {}, label), value, el('dd', { class: 'stat-sub' }, note)), value, note };
  }

  function overviewView(ctx) {
    pageHeader(ctx, 'Overview');
    const tiles = {
      head: statTile('Head position', 'overview-head', { monospace: true }),
      rate: statTile('Events per second', 'overview-rate'),
      events: statTile('Events', 'overview-events'),
      commits: statTile('Commits', 'overview-commits'),
      commitSize: statTile('Mean group-commit size (events)', 'commit-size'),
      started: statTile('Up for', 'overview-uptime'),
    };
    const plotEl = el('div', { id: 'throughput-plot', class: 'plot', 'data-points': '0' });
    const plot = createTimePlot(ctx, plotEl, { yLabel: 'per second' });
    const nodes = el('div', { id: 'nodes', class: 'nodes' }, el('p', { class: 'loading' }, 'Loading…'));
    const checks = dataTable(['Check', 'Status', 'Details'], { caption: 'Readiness checks' });
    const readyStatus = el('p', { class: 'ready-status' });

    ctx.root.append(
      el('dl', { class: 'stats' }, Object.values(tiles).map((t) => t.node)),
      el('figure', { class: 'panel plot-panel' },
        el('figcaption', {}, el('h2', {}, 'Throughput'), el('span', { class: 'muted' }, 'events and commits per second, last 5 minutes')),
        plotEl),
      el('div', { class: 'columns' },
        section('Nodes', { id: 'nodes-panel' }, nodes),
        section('Readiness', { id: 'ready-panel' }, readyStatus, el('div', { id: 'ready-report' }, checks.table))),
    );

    ctx.poll(async () => {
      const { overview } = await gql(OVERVIEW_QUERY, { seconds: PLOT_SECONDS });
      if (!ctx.alive) return;
      renderOverviewTiles(tiles, overview);
      plot.update(sampleTimes(overview.samples), [
        { label: 'Events/s', color: PALETTE[0], values: overview.samples.map((s) => s.eventsPerSecond) },
        { label: 'Commits/s', color: PALETTE[1], values: overview.samples.map((s) => s.commitsPerSecond) },
      ]);
    });

    ctx.poll(async () => {
      const ready = await fetchReady();
      if (!ctx.alive) return;
      renderNodes(nodes, ready);
      readyStatus.replaceChildren('Node is ', stateBadge(ready.status || 'unknown'));
      renderChecks(checks.tbody, ready.checks || {});
    });
  }

  function renderOverviewTiles(tiles, overview) {
    const last = overview.samples[overview.samples.length - 1];
    tiles.head.value.textContent = overview.head;
    tiles.rate.value.textContent = last ? fmt.rate(last.eventsPerSecond) : '—';
    tiles.rate.note.textContent = last ? `${fmt.rate(last.commitsPerSecond)} commits/s` : '';
    tiles.events.value.textContent = fmt.int(overview.events);
    tiles.commits.value.textContent = fmt.int(overview.commits);
    tiles.commitSize.value.textContent = overview.meanCommitEvents.toFixed(2);
    const uptime = (Date.now() - Date.parse(overview.startedAt)) / 1000;
    tiles.started.value.textContent = Number.isFinite(uptime) ? fmt.duration(Math.max(0, uptime)) : '—';
    tiles.started.note.replaceChildren('since ', timeEl(overview.startedAt));
  }

  // /ready answers 503 with the same JSON report when a check is down.
  async function fetchReady() {
    const response = await send('/ready', { headers: { Accept: 'application/json' } });
    const body = await response.json().catch(() => null);
    if (!body || typeof body !== 'object' || !body.checks) throw httpError(response);
    return body;
  }

  function renderNodes(container, ready) {
    const cluster = ready.checks.cluster;
    const store = ready.checks.store || {};
    const facts = cluster
      ? [
        ['Role', cluster.role === 'query' ? 'query (reads only)' : cluster.role],
        ['Leading', cluster.leading ? 'yes' : 'no'],
        ['Writer', cluster.writer ?? '—'],
        ['Head', cluster.head ?? store.head],
        ['Log sequence', cluster.logSequence ?? '—'],
      ]
      : [
        ['Mode', 'single node'],
        ['Head', store.head ?? '—'],
        ['Writable', store.writable ? 'yes' : 'no'],
      ];
    const reason = (cluster && cluster.reason) || store.reason;
    container.replaceChildren(el('article', { class: 'node-card' },
      el('h3', {}, cluster ? `Node ${cluster.node}` : 'This node', ' ', stateBadge(cluster ? cluster.status : store.status || 'unknown')),
      el('dl', { class: 'facts' }, facts.map(([term, value]) => [el('dt', {}, term), el('dd', { class: 'mono' }, String(value))])),
      reason ? el('p', { class: 'error-text' }, reason) : null));
  }

  function checkDetails(report) {
    return Object.entries(report)
      .filter(([key]) => key !== 'status')
      .map(([key, value]) => `${key}: ${typeof value === 'object' ? JSON.stringify(value) : value}`)
      .join(' · ');
  }

  function renderChecks(tbody, checks) {
    const rows = Object.entries(checks).sort(([a], [b]) => a.localeCompare(b));
    syncTable(tbody, rows, ([name]) => name, ([name, report]) => [
      { text: name, class: 'mono' },
      { build: () => stateBadge(report.status || 'unknown'), sig: report.status },
      { text: checkDetails(report), class: 'details' },
    ]);
  }

  // ---------------------------------------------------------------- streams

  const CATEGORIES_QUERY = `query Categories { categories { name streams events lastRecordedAt } }`;
  const STREAMS_QUERY = `query Streams($category: String, $prefix: String, $first: Int, $after: String) {
    streams(category: $category, prefix: $prefix, first: $first, after: $after) {
      nodes { streamId category version events lastPosition lastRecordedAt }
      pageInfo { hasNextPage endCursor }
    }
  }`;

  // Kept across visits so that going back from a stream returns to the same page.
  const streamSearch = { prefix: '', category: '', cursors: [null] };

  function streamsView(ctx) {
    pageHeader(ctx, 'Streams');
    const prefix = el('input', { id: 'stream-prefix', type: 'search', value: streamSearch.prefix, autocomplete: 'off', spellcheck: 'false', placeholder: 'order-' });
    const category = el('select', { id: 'stream-category' }, el('option', { value: '' }, 'All categories'));
    const form = el('form', { id: 'stream-search', class: 'filter-bar', role: 'search' },
      el('div', { class: 'field' }, el('label', { for: 'stream-prefix' }, 'Stream id prefix'), prefix),
      el('div', { class: 'field' }, el('label', { for: 'stream-category' }, 'Category'), category),
      el('div', { class: 'field field-action' }, el('button', { type: 'submit', class: 'button button-primary' }, 'Search')));
    const results = dataTable([
      'Stream', 'Category', ['Version', 'num'], ['Events', 'num'], ['Last position', 'num'], 'Last activity',
    ], { caption: 'Streams' });
    const empty = emptyNote('No streams match.');
    const pager = el('div', { class: 'pager' });
    const categories = dataTable(['Category', ['Streams', 'num'], ['Events', 'num']], { caption: 'Categories' });
    const categoriesEmpty = emptyNote('No events yet.');

    ctx.root.append(el('div', { class: 'streams-layout' },
      el('div', {},
        form,
        el('div', { id: 'stream-list', class: 'table-wrap' }, results.table, empty),
        pager),
      section('Categories', { id: 'categories-panel', class: 'panel side-panel' }, categories.table, categoriesEmpty)));

    const applyCategory = (name) => {
      category.value = name;
      form.requestSubmit();
    };

    async function loadCategories() {
      const data = await gql(CATEGORIES_QUERY);
      if (!ctx.alive) return;
      const list = data.categories;
      for (const c of list) {
        category.append(el('option', { value: c.name }, c.name));
      }
      category.value = streamSearch.category;
      categoriesEmpty.hidden = list.length > 0;
      syncTable(categories.tbody, list, (c) => c.name, (c) => [
        { build: () => el('button', { type: 'button', class: 'link-button mono', on: { click: () => applyCategory(c.name) } }, c.name), sig: c.name },
        { text: fmt.int(c.streams), class: 'num' },
        { text: fmt.int(c.events), class: 'num' },
      ]);
    }

    async function loadPage() {
      const after = streamSearch.cursors[streamSearch.cursors.length - 1];
      const data = await gql(STREAMS_QUERY, {
        category: streamSearch.category || null,
        prefix: streamSearch.prefix || null,
        first: STREAMS_PAGE_SIZE,
        after,
      });
      if (!ctx.alive) return;
      const { nodes, pageInfo } = data.streams;
      empty.hidden = nodes.length > 0;
      syncTable(results.tbody, nodes, (s) => s.streamId, streamRow);
      renderStreamsPager(pager, pageInfo, () => ctx.run(loadPage));
    }

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const changed = prefix.value.trim() !== streamSearch.prefix || category.value !== streamSearch.category;
      streamSearch.prefix = prefix.value.trim();
      streamSearch.category = category.value;
      if (changed) streamSearch.cursors = [null];
      ctx.run(loadPage);
    });

    ctx.run(loadCategories);
    ctx.run(loadPage);
  }

  function streamRow(s) {
    return [
      { build: () => link(streamHref(s.streamId), s.streamId, { class: 'stream-link mono', 'data-stream-id': s.streamId }), sig: s.streamId },
      s.category,
      { text: s.version, class: 'num mono' },
      { text: fmt.int(s.events), class: 'num' },
      { text: s.lastPosition, class: 'num mono' },
      { build: () => timeEl(s.lastRecordedAt, fmt.ago(s.lastRecordedAt)), sig: s.lastRecordedAt },
    ];
  }

  // The pager is rebuilt per page; keyboard users keep their place on the button they used.
  function renderStreamsPager(pager, pageInfo, reload) {
    const page = streamSearch.cursors.length;
    const turn = (move) => async () => {
      move();
      await reload();
      (pager.querySelector('#streams-next') || pager.querySelector('#streams-prev'))?.focus();
    };
    const previous = page > 1
      ? button('Previous page', { id: 'streams-prev', on: { click: turn(() => streamSearch.cursors.pop()) } })
      : null;
    const next = pageInfo.hasNextPage
      ? button('Next page', { id: 'streams-next', on: { click: turn(() => streamSearch.cursors.push(pageInfo.endCursor)) } })
      : null;
    pager.replaceChildren(...[previous, el('span', { class: 'muted' }, `Page ${page}`), next].filter(Boolean));
  }

  // ---------------------------------------------------------------- one stream

  const STREAM_QUERY = `query Stream($id: String!, $from: Version, $backwards: Boolean, $limit: Int) {
    stream(id: $id, fromVersion: $from, backwards: $backwards, limit: $limit) {
      streamId version nextVersion
      events { position streamVersion eventId type schemaVersion recordedAt removed metadata { actor } }
    }
  }`;

  function streamView(ctx, streamId) {
    const header = pageHeader(ctx, streamId, { crumbs: [['#/streams', 'Streams']] });
    header.h1.classList.add('mono', 'break');
    document.title = `Stream ${streamId} · Annals`;
    const summary = el('p', { class: 'muted', id: 'stream-summary' }, 'Loading…');
    const buttons = {
      first: button('« First', { id: 'stream-first', disabled: true }),
      older: button('‹ Older', { id: 'stream-older', disabled: true }),
      newer: button('Newer ›', { id: 'stream-newer', disabled: true }),
      last: button('Last »', { id: 'stream-last', disabled: true }),
    };
    const events = dataTable([
      ['Version', 'num'], ['Position', 'num'], 'Type', ['Schema', 'num'], 'Recorded at', 'Actor',
    ], { id: 'stream-events', caption: `Events of ${streamId}` });
    ctx.root.append(
      summary,
      el('div', { class: 'pager', role: 'group', 'aria-label': 'Stream pages' }, Object.values(buttons)),
      el('div', { class: 'table-wrap' }, events.table));

    let page = null;
    async function load(from, backwards) {
      const data = await gql(STREAM_QUERY, { id: streamId, from, backwards, limit: STREAM_PAGE_SIZE });
      if (!ctx.alive) return;
      page = describePage(data.stream, backwards);
      summary.textContent = `Version ${data.stream.version} · ${page.rows.length ? `showing versions ${page.lo}–${page.hi}` : 'no events on this page'}`;
      syncTable(events.tbody, page.rows, (e) => e.position, streamEventRow);
      buttons.first.disabled = !page.canOlder;
      buttons.older.disabled = !page.canOlder;
      buttons.newer.disabled = !page.canNewer;
      buttons.last.disabled = !page.canNewer;
    }

    const go = (from, backwards) => ctx.run(async () => {
      try {
        await load(from, backwards);
      } catch (error) {
        if (error.code === 'NOT_FOUND') summary.textContent = 'This stream has no events.';
        throw error;
      }
    });
    buttons.first.addEventListener('click', () => go('1', false));
    buttons.last.addEventListener('click', () => go(null, true));
    buttons.older.addEventListener('click', () => page && go(String(page.lo - 1n), true));
    buttons.newer.addEventListener('click', () => page && go(String(page.hi + 1n), false));
    go(null, true);
  }

  // The page read in one direction says exactly whether more exists that way (nextVersion);
  // the other way is inferred from the versions shown.
  function describePage(stream, backwards) {
    const rows = [...stream.events].sort((a, b) => (BigInt(a.streamVersion) < BigInt(b.streamVersion) ? -1 : 1));
    if (!rows.length) return { rows, lo: 0n, hi: 0n, canOlder: false, canNewer: false };
    const lo = BigInt(rows[0].streamVersion);
    const hi = BigInt(rows[rows.length - 1].streamVersion);
    const more = stream.nextVersion != null;
    return {
      rows,
      lo,
      hi,
      canOlder: backwards ? more : lo > 1n,
      canNewer: backwards ? hi < BigInt(stream.version) : more,
    };
  }

  function streamEventRow(e) {
    return [
      { text: e.streamVersion, class: 'num mono' },
      { build: () => link(eventHref(e.position), e.position, { class: 'event-link mono', 'data-position': e.position }), sig: e.position, class: 'num' },
      { build: () => el('span', {}, e.type, e.removed ? [' ', badge('removed', 'neutral')] : null), sig: `${e.type}:${e.removed}` },
      { text: e.schemaVersion, class: 'num' },
      { build: () => timeEl(e.recordedAt), sig: e.recordedAt },
      { text: (e.metadata && e.metadata.actor) || '—', class: 'mono' },
    ];
  }

  // ---------------------------------------------------------------- one event

  const EVENT_FIELDS = `position streamId category streamVersion eventId type schemaVersion recordedAt
    payload removed prevHash hash metadata { correlationId causationId actor extra }`;
  const EVENT_BY_POSITION = `query EventAt($position: Position!) { head event(position: $position) { ${EVENT_FIELDS} } }`;
  const EVENT_BY_ID = `query EventById($id: UUID!) { head event(id: $id) { ${EVENT_FIELDS} } }`;
  const VERIFY_QUERY = `query Verify($from: Position!, $to: Position!) {
    verifyChain(from: $from, to: $to) { from to checked ok error }
  }`;

  function eventView(ctx, lookup) {
    const header = pageHeader(ctx, lookup.position ? `Event ${lookup.position}` : 'Event', {
      crumbs: [['#/streams', 'Streams']],
    });
    const body = el('div', { class: 'event-body' }, el('p', { class: 'loading' }, 'Loading…'));
    ctx.root.append(body);
    ctx.run(async () => {
      let data;
      try {
        data = lookup.id
          ? await gql(EVENT_BY_ID, { id: lookup.id })
          : await gql(EVENT_BY_POSITION, { position: lookup.position });
      } catch (error) {
        body.replaceChildren(el('p', { class: 'empty' }, 'The event could not be loaded.'));
        throw error;
      }
      if (!ctx.alive) return;
      if (!data.event) {
        const detail = lookup.id ? `: ${lookup.id}` : `: nothing at position ${lookup.position} (head ${data.head})`;
        body.replaceChildren(el('p', { id: 'event-missing', class: 'empty' }, 'no event with this id', mono(detail)));
        return;
      }
      const event = data.event;
      header.setTitle(`Event ${event.position}`);
      const chain = renderEvent(body, event, data.head);
      await verifyAround(ctx, chain, event.position, data.head);
    });
  }

  function renderEvent(body, event, head) {
    const meta = event.metadata || {};
    const chain = el('p', { id: 'chain-status', class: 'chain-status' }, 'checking…');
    const position = BigInt(event.position);
    const neighbours = el('nav', { class: 'neighbours', 'aria-label': 'Neighbouring events' },
      position > 1n ? link(eventHref(String(position - 1n)), `‹ Position ${position - 1n}`) : el('span'),
      position < BigInt(head) ? link(eventHref(String(position + 1n)), `Position ${position + 1n} ›`) : el('span'));
    const facts = [
      ['Type', el('span', { id: 'event-type', class: 'event-type' }, event.type)],
      ['Position', mono(event.position, { id: 'event-position' })],
      ['Stream', link(streamHref(event.streamId), event.streamId, { id: 'event-stream', class: 'mono' })],
      ['Stream version', mono(event.streamVersion, { id: 'event-version' })],
      ['Schema version', mono(String(event.schemaVersion), { id: 'event-schema-version' })],
      ['Event id', mono(event.eventId, { id: 'event-id' })],
      ['Recorded at', el('time', { id: 'event-recorded-at', class: 'mono', datetime: event.recordedAt }, event.recordedAt)],
      ['Actor', mono(meta.actor || '—')],
      ['Correlation', meta.correlationId
        ? link(`#/events/id/${encodeURIComponent(meta.correlationId)}`, meta.correlationId, { id: 'event-correlation', class: 'mono' })
        : el('span', { class: 'muted' }, 'none')],
      ['Causation', meta.causationId
        ? link(`#/events/id/${encodeURIComponent(meta.causationId)}`, meta.causationId, { id: 'event-causation', class: 'mono' })
        : el('span', { class: 'muted' }, 'none')],
    ];
    body.replaceChildren(
      event.removed ? el('p', { class: 'notice' }, 'This event was removed (a hard deletion or retention): its payload and metadata are gone; its position and hashes stay.') : '',
      neighbours,
      el('div', { class: 'columns' },
        section('Event', { id: 'event-facts' },
          el('dl', { class: 'facts' }, facts.map(([term, value]) => [el('dt', {}, term), el('dd', {}, value)]))),
        section('Hash chain', { id: 'event-chain' },
          el('dl', { class: 'facts' },
            el('dt', {}, 'Previous hash'), el('dd', {}, mono(event.prevHash, { id: 'event-prev-hash', class: 'mono hash' })),
            el('dt', {}, 'Hash'), el('dd', {}, mono(event.hash, { id: 'event-hash', class: 'mono hash' })),
            el('dt', {}, 'Chain check'), el('dd', {}, chain)))),
      el('div', { class: 'columns' },
        section('Payload', { id: 'event-payload-panel' },
          el('pre', { id: 'event-payload', class: 'code', tabindex: '0' }, fmt.json(event.payload))),
        section('Metadata', { id: 'event-metadata-panel' },
          el('pre', { id: 'event-metadata', class: 'code', tabindex: '0' }, fmt.json(meta)))));
    return chain;
  }

  // Checks the links from position-1 to position+1 (clamped to the log).
  async function verifyAround(ctx, chain, position, head) {
    const p = BigInt(position);
    const from = p > 1n ? p - 1n : 1n;
    const to = p < BigInt(head) ? p + 1n : p;
    try {
      const { verifyChain: check } = await gql(VERIFY_QUERY, { from: String(from), to: String(to) });
      if (!ctx.alive) return;
      if (check.ok) {
        chain.replaceChildren(badge('verified', 'ok'), ` positions ${check.from}–${check.to}, ${fmt.int(check.checked)} checked`);
      } else {
        chain.replaceChildren(badge('broken', 'bad'), `: ${check.error || 'the chain does not verify'}`);
      }
      chain.dataset.ok = String(check.ok);
    } catch (error) {
      chain.textContent = 'not checked';
      throw error;
    }
  }

  // ---------------------------------------------------------------- live tail

  const TAIL_SUBSCRIPTION = `subscription Tail($after: Position, $filter: EventFilter) {
    events(after: $after, filter: $filter) { position streamId type recordedAt }
  }`;

  const WS_CLOSE_CODES = { 4400: 'BAD_REQUEST', 4401: 'UNAUTHENTICATED', 4403: 'FORBIDDEN', 4429: 'TOO_MANY_REQUESTS', 4500: 'INTERNAL_SERVER_ERROR' };

  // Closes worth retrying: the network or the server went away. Anything else (1002 is how
  // async-graphql refuses a connection_init, 4xxx are protocol errors) would only fail again.
  function isTransientClose(code) {
    return code === 1001 || code === 1006 || code === 1011 || code === 1012 || code === 1013 || code === 3008;
  }

  function closeError(code, reason, acknowledged) {
    const name = WS_CLOSE_CODES[code] || (acknowledged ? `WS_CLOSED_${code}` : 'CONNECTION_REJECTED');
    return new ApiError(name, reason || `the server closed the subscription (code ${code})`);
  }

  // A graphql-transport-ws client for one subscription per socket: the tail reopens the
  // socket whenever its filter changes anyway.
  function openSubscription({ query, variables, onNext, onError, onStatus, onClose }) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/graphql/ws`, 'graphql-transport-ws');
    let closing = false;
    let acknowledged = false;
    const sendMessage = (message) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    };

    socket.addEventListener('open', () => {
      // Closing a socket that is still connecting makes Chrome log an error, so wait for open.
      if (closing) {
        socket.close(1000);
        return;
      }
      const key = storedKey();
      sendMessage({ type: 'connection_init', payload: key ? { Authorization: `Bearer ${key}` } : {} });
    });
    socket.addEventListener('message', (message) => {
      if (closing) return;
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        onError(new ApiError('PROTOCOL_ERROR', 'the server sent a message that is not JSON'));
        return;
      }
      switch (data.type) {
        case 'connection_ack':
          acknowledged = true;
          onStatus('live');
          sendMessage({ id: '1', type: 'subscribe', payload: { query, variables } });
          break;
        case 'next': {
          const error = firstError(data.payload);
          if (error) onError(error);
          else if (data.payload && data.payload.data) onNext(data.payload.data);
          break;
        }
        case 'error':
          onError(firstError({ errors: data.payload }) || new ApiError('SUBSCRIPTION_ERROR', 'the subscription failed'));
          break;
        case 'complete':
          onStatus('complete');
          break;
        case 'ping':
          sendMessage({ type: 'pong' });
          break;
        default:
          break;
      }
    });
    socket.addEventListener('close', (event) => {
      if (!closing) onClose({ code: event.code, reason: event.reason, acknowledged });
    });

    return {
      close() {
        closing = true;
        if (socket.readyState === WebSocket.OPEN) {
          sendMessage({ id: '1', type: 'complete' });
          socket.close(1000);
        }
      },
    };
  }

  // Remembered across visits: an operator usually watches the same categories.
  const tailFilter = { categories: '', types: '' };

  function tailView(ctx) {
    pageHeader(ctx, 'Live tail');
    const categories = el('input', { id: 'tail-categories', type: 'text', value: tailFilter.categories, autocomplete: 'off', spellcheck: 'false', placeholder: 'order, product', 'aria-describedby': 'tail-hint' });
    const types = el('input', { id: 'tail-types', type: 'text', value: tailFilter.types, autocomplete: 'off', spellcheck: 'false', placeholder: 'OrderPlaced', 'aria-describedby': 'tail-hint' });
    const form = el('form', { id: 'tail-form', class: 'filter-bar' },
      el('div', { class: 'field' }, el('label', { for: 'tail-categories' }, 'Categories'), categories),
      el('div', { class: 'field' }, el('label', { for: 'tail-types' }, 'Event types'), types),
      el('div', { class: 'field field-action' }, el('button', { id: 'tail-apply', type: 'submit', class: 'button button-primary' }, 'Apply')));
    const pause = button('Pause', { id: 'tail-pause', 'aria-pressed': 'false' });
    const status = el('span', { id: 'tail-status', class: 'tail-status', role: 'status' }, 'connecting…');
    const counts = el('span', { id: 'tail-counts', class: 'muted' });
    const list = el('ol', { id: 'tail-list', class: 'tail-list' });
    const empty = el('p', { class: 'empty', id: 'tail-empty' }, 'Waiting for new events…');

    ctx.root.append(
      form,
      el('p', { id: 'tail-hint', class: 'hint' }, 'Comma-separated; empty shows everything. New events appear at the top; the newest 500 are kept.'),
      el('div', { class: 'toolbar' }, pause, status, counts),
      el('div', { class: 'panel tail-panel' }, empty, list));

    const tail = {
      subscription: null, paused: false, pending: [], waiting: 0, received: 0,
      from: null, last: null, flushTimer: null, retryTimer: null, retryDelay: 1000,
    };

    function setStatus(text, tone) {
      status.replaceChildren(badge(text, tone));
    }

    function updateCounts() {
      const shown = list.children.length;
      empty.hidden = shown > 0;
      counts.textContent = tail.paused && tail.waiting
        ? `${fmt.int(tail.waiting)} new event${tail.waiting === 1 ? '' : 's'} waiting`
        : `${fmt.int(tail.received)} received since position ${tail.from ?? '—'}`;
    }

    function receive(event) {
      tail.received += 1;
      tail.last = event.position;
      tail.pending.push(event);
      if (tail.pending.length > TAIL_MAX) tail.pending.splice(0, tail.pending.length - TAIL_MAX);
      if (tail.paused) {
        tail.waiting += 1;
        updateCounts();
      } else if (!tail.flushTimer) {
        // Batched so that a burst of events costs one DOM update.
        tail.flushTimer = setTimeout(flush, 50);
      }
    }

    function flush() {
      tail.flushTimer = null;
      if (tail.paused || !tail.pending.length) return;
      const fragment = document.createDocumentFragment();
      for (let i = tail.pending.length - 1; i >= 0; i -= 1) fragment.append(tailItem(tail.pending[i]));
      tail.pending = [];
      tail.waiting = 0;
      list.prepend(fragment);
      while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
      updateCounts();
    }

    function connect(after) {
      setStatus('connecting', 'neutral');
      tail.subscription = openSubscription({
        query: TAIL_SUBSCRIPTION,
        variables: { after, filter: currentFilter() },
        onNext: (data) => {
          tail.retryDelay = 1000;
          receive(data.events);
        },
        onError: (error) => {
          setStatus('stopped', 'bad');
          showError(error, 'tail');
        },
        onStatus: (state) => {
          if (state === 'live') {
            setStatus('live', 'ok');
            return;
          }
          // The server ends live subscriptions when it shuts down: resume once it is back.
          stop();
          scheduleReconnect();
        },
        onClose: ({ code, reason, acknowledged }) => {
          tail.subscription = null;
          if (!ctx.alive) return;
          if (isTransientClose(code)) {
            scheduleReconnect();
            return;
          }
          setStatus('stopped', 'bad');
          showError(closeError(code, reason, acknowledged), 'tail');
        },
      });
    }

    // Resumes after the last event received, so nothing is lost or shown twice.
    function scheduleReconnect() {
      const delay = tail.retryDelay;
      tail.retryDelay = Math.min(tail.retryDelay * 2, 15000);
      setStatus(`disconnected, retrying in ${Math.round(delay / 1000)} s`, 'warn');
      tail.retryTimer = setTimeout(() => connect(tail.last ?? tail.from), delay);
    }

    function currentFilter() {
      const filter = { categories: commaList(tailFilter.categories), types: commaList(tailFilter.types) };
      return filter.categories || filter.types ? filter : null;
    }

    function stop() {
      clearTimeout(tail.retryTimer);
      if (tail.subscription) tail.subscription.close();
      tail.subscription = null;
    }

    // A live tail starts at the current head: without `after` the server replays the log.
    async function start() {
      stop();
      const { head } = await gql('query Head { head }');
      if (!ctx.alive) return;
      Object.assign(tail, { from: head, last: null, pending: [], waiting: 0, received: 0, retryDelay: 1000 });
      list.replaceChildren();
      updateCounts();
      connect(head);
    }

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      tailFilter.categories = categories.value;
      tailFilter.types = types.value;
      clearError('tail');
      ctx.run(start, 'tail');
    });

    pause.addEventListener('click', () => {
      tail.paused = !tail.paused;
      pause.setAttribute('aria-pressed', String(tail.paused));
      pause.textContent = tail.paused ? 'Resume' : 'Pause';
      if (!tail.paused) flush();
      updateCounts();
    });

    ctx.onLeave(() => {
      stop();
      clearTimeout(tail.flushTimer);
    });
    ctx.run(start, 'tail');
  }

  function tailItem(event) {
    return el('li', { class: 'tail-event', 'data-position': event.position },
      link(eventHref(event.position), event.position, { class: 'mono tail-position', 'aria-label': `Event at position ${event.position}` }),
      timeEl(event.recordedAt, fmt.clock(event.recordedAt)),
      el('span', { class: 'tail-type' }, event.type),
      link(streamHref(event.streamId), event.streamId, { class: 'mono tail-stream' }));
  }

  // ---------------------------------------------------------------- projections

  const PROJECTION_FIELDS = `name version generation state checkpoint head lag eventsPerSecond lastError
    failedPosition parked rebuild { generation version checkpoint head eventsPerSecond etaSeconds }`;
  const PROJECTIONS_QUERY = `query Projections { projections { ${PROJECTION_FIELDS} } }`;
  // Process managers, webhooks and every parked list are admin-only on the server.
  const OPERATIONS_QUERY = `query Operations {
    processes { name projection { state checkpoint lag lastError } outbox deadlines nextDeadlineAt parked sent rejected }
    webhooks { id url eventTypes categories pending lag deadLetters delivered failures lastError }
  }`;
  const LAGS_QUERY = `query Lags($seconds: Int) { overview(lastSeconds: $seconds) { samples { at lags { name lag } } } }`;
  const PARKED_EVENTS_QUERY = `query Parked($projection: String!) {
    parkedEvents(projection: $projection) { position eventId streamId eventType error attempts parkedAt }
  }`;
  const PARKED_COMMANDS_QUERY = `query ParkedCommands($process: String!) {
    parkedCommands(process: $process) { position index instance command idempotencyKey error attempts parkedAt }
  }`;
  const DEAD_LETTERS_QUERY = `query DeadLetters($id: String!) { webhookDeadLetters(id: $id) { position error attempts deadAt } }`;

  const PROJECTION_ACTIONS = {
    pause: {
      mutation: `mutation Pause($name: String!) { status: pauseProjection(name: $name) { ${PROJECTION_FIELDS} } }`,
      title: 'Pause projection',
      confirmLabel: 'Pause',
      message: (name) => `Pause ${name}? It stops after its current batch; its read model keeps answering queries but falls behind.`,
    },
    resume: {
      mutation: `mutation Resume($name: String!) { status: resumeProjection(name: $name) { ${PROJECTION_FIELDS} } }`,
      title: 'Resume projection',
      confirmLabel: 'Resume',
      message: (name) => `Resume ${name}? A failed projection retries the event it stopped on.`,
    },
    rebuild: {
      mutation: `mutation Rebuild($name: String!) { status: rebuildProjection(name: $name) { ${PROJECTION_FIELDS} } }`,
      title: 'Rebuild projection',
      confirmLabel: 'Rebuild',
      message: (name) => `Rebuild ${name} from position 1? A new generation is built beside the current one, which keeps serving until the new one has caught up.`,
    },
  };

  function isAdmin() {
    return session.viewer != null && ROLE_RANK[session.viewer.role] >= ROLE_RANK.ADMIN;
  }

  function adminButton(label, props) {
    return button(label, { class: 'button button-small', 'data-requires': 'admin', ...props });
  }

  function projectionsView(ctx) {
    pageHeader(ctx, 'Projections');
    const admin = isAdmin();
    const notice = el('p', { id: 'projections-status', class: 'action-status', role: 'status' });
    const say = (text) => { notice.textContent = text; };
    const table = dataTable([
      'Projection', 'State', ['Checkpoint', 'num'], ['Lag', 'num'], ['Events/s', 'num'], ['Generation', 'num'],
      'Rebuild', ['Parked', 'num'], admin ? 'Actions' : null,
    ].filter(Boolean), { id: 'projections-table', caption: 'Projections' });
    const lagEl = el('div', { id: 'lag-plot', class: 'plot', 'data-points': '0' });
    const lagPlot = createTimePlot(ctx, lagEl, { yLabel: 'events behind', height: 220 });
    const parked = el('div', { id: 'parked', class: 'parked-list' });

    ctx.root.append(
      notice,
      el('div', { class: 'table-wrap panel' }, table.table),
      el('figure', { class: 'panel plot-panel' },
        el('figcaption', {}, el('h2', {}, 'Lag'), el('span', { class: 'muted' }, 'events behind the head, per projection, last 5 minutes')),
        lagEl),
      section('Parked events', { id: 'parked-panel' }, parked));

    let latest = [];
    // Every write goes through here: failures reach the banner, success refreshes the page.
    const perform = (task) => ctx.run(async () => {
      await task();
      if (ctx.alive) await refresh();
    });
    const parkedActions = parkedEventActions(say);
    const operations = admin ? operationsPanels(ctx, say, perform) : readerOperationsNote(ctx);

    async function act(kind, name) {
      const action = PROJECTION_ACTIONS[kind];
      const confirmed = await confirmAction({ title: action.title, message: action.message(name), confirmLabel: action.confirmLabel });
      if (!confirmed || !ctx.alive) return;
      await perform(async () => {
        const { status } = await gql(action.mutation, { name });
        if (!ctx.alive) return;
        latest = latest.map((p) => (p.name === status.name ? status : p));
        renderProjections(table.tbody, latest, admin, act);
        say(`${name} is ${status.state.toLowerCase()}.`);
      });
    }

    async function refresh() {
      const { projections } = await gql(PROJECTIONS_QUERY);
      if (!ctx.alive) return;
      latest = projections;
      renderProjections(table.tbody, latest, admin, act);
      const lists = admin
        ? await loadEach(latest, (p) => p.parked, (p) => gql(PARKED_EVENTS_QUERY, { projection: p.name }).then((d) => d.parkedEvents))
        : new Map();
      if (!ctx.alive) return;
      renderParkedEvents(parked, latest, lists, admin, (kind, ...args) => perform(() => parkedActions[kind](...args)));
      if (operations) await operations.refresh();
    }

    ctx.poll(refresh);
    ctx.poll(async () => {
      const { overview } = await gql(LAGS_QUERY, { seconds: PLOT_SECONDS });
      if (ctx.alive) renderLagPlot(lagPlot, overview.samples);
    });
  }

  function parkedEventActions(say) {
    return {
      async retry(projection, position) {
        const { applied } = await gql('mutation Retry($projection: String!, $position: Position!) { applied: retryParkedEvent(projection: $projection, position: $position) }', { projection, position });
        say(applied ? `Position ${position} applied to ${projection}.` : `Position ${position} failed again in ${projection}; it stays parked.`);
      },
      async skip(projection, position) {
        const ok = await confirmAction({ title: 'Skip parked event', message: `Skip position ${position} in ${projection}? Its read model stays without this event until a rebuild.`, confirmLabel: 'Skip' });
        if (!ok) return;
        await gql('mutation Skip($projection: String!, $position: Position!) { skipParkedEvent(projection: $projection, position: $position) }', { projection, position });
        say(`Position ${position} skipped in ${projection}.`);
      },
    };
  }

  // Process managers and webhooks, with their parked commands and dead letters (admin only).
  function operationsPanels(ctx, say, perform) {
    const processes = dataTable([
      'Process', 'State', ['Checkpoint', 'num'], ['Lag', 'num'], ['Outbox', 'num'], ['Deadlines', 'num'],
      'Next deadline', ['Parked', 'num'], ['Sent', 'num'], ['Rejected', 'num'],
    ], { caption: 'Process managers' });
    const processesEmpty = emptyNote('No process manager runs on this node.');
    const parkedCommands = el('div', { class: 'parked-list' });
    const webhooks = dataTable([
      'Webhook', 'URL', 'Delivers', ['Pending', 'num'], ['Lag', 'num'], ['Delivered', 'num'], ['Failures', 'num'],
      ['Dead letters', 'num'], 'Last error',
    ], { caption: 'Webhooks' });
    const webhooksEmpty = emptyNote('No webhook subscriptions.');
    const deadLetters = el('div', { class: 'parked-list' });
    ctx.root.append(
      section('Process managers', { id: 'processes' }, el('div', { class: 'table-wrap' }, processes.table), processesEmpty, parkedCommands),
      section('Webhooks', { id: 'webhooks' }, el('div', { class: 'table-wrap' }, webhooks.table), webhooksEmpty, deadLetters));

    const commandActions = {
      async retry(process, c) {
        await gql('mutation Retry($process: String!, $position: Position!, $index: Int!) { retryParkedCommand(process: $process, position: $position, index: $index) }', { process, position: c.position, index: c.index });
        say(`Command ${c.position}/${c.index} of ${process} is back in the outbox.`);
      },
      async skip(process, c) {
        const ok = await confirmAction({ title: 'Skip parked command', message: `Give up command ${c.position}/${c.index} of ${process} for good?`, confirmLabel: 'Skip' });
        if (!ok) return;
        await gql('mutation Skip($process: String!, $position: Position!, $index: Int!) { skipParkedCommand(process: $process, position: $position, index: $index) }', { process, position: c.position, index: c.index });
        say(`Command ${c.position}/${c.index} of ${process} skipped.`);
      },
    };
    const redrive = async (id, position) => {
      await gql('mutation Redrive($id: String!, $position: Position!) { redriveWebhook(id: $id, position: $position) }', { id, position });
      say(`Position ${position} is queued again for webhook ${id}.`);
    };

    return {
      async refresh() {
        const data = await gql(OPERATIONS_QUERY);
        if (!ctx.alive) return;
        processesEmpty.hidden = data.processes.length > 0;
        syncTable(processes.tbody, data.processes, (p) => p.name, processRow);
        webhooksEmpty.hidden = data.webhooks.length > 0;
        syncTable(webhooks.tbody, data.webhooks, (w) => w.id, webhookRow);
        const [commands, letters] = await Promise.all([
          loadEach(data.processes, (p) => p.parked, (p) => gql(PARKED_COMMANDS_QUERY, { process: p.name }).then((d) => d.parkedCommands)),
          loadEach(data.webhooks, (w) => w.deadLetters, (w) => gql(DEAD_LETTERS_QUERY, { id: w.id }).then((d) => d.webhookDeadLetters)),
        ]);
        if (!ctx.alive) return;
        renderParkedCommands(parkedCommands, data.processes, commands, (kind, ...args) => perform(() => commandActions[kind](...args)));
        renderDeadLetters(deadLetters, data.webhooks, letters, (...args) => perform(() => redrive(...args)));
      },
    };
  }

  function readerOperationsNote(ctx) {
    const note = 'Shown to the admin role only.';
    ctx.root.append(
      section('Process managers', { id: 'processes' }, el('p', { class: 'muted' }, note)),
      section('Webhooks', { id: 'webhooks' }, el('p', { class: 'muted' }, note)));
    return null;
  }

  // Fetches the detail list of each item whose count is non-zero; the others get [].
  async function loadEach(items, countOf, fetchList) {
    const lists = await Promise.all(items.map((item) => (Number(countOf(item)) > 0 ? fetchList(item) : [])));
    return new Map(items.map((item, i) => [item, lists[i]]));
  }

  function renderProjections(tbody, list, admin, act) {
    syncTable(tbody, list, (p) => p.name, (p) => {
      const cells = [
        { build: () => projectionName(p), sig: `${p.name}:${p.lastError}:${p.failedPosition}`, class: 'name-cell' },
        { build: () => stateBadge(p.state), sig: p.state, class: 'projection-state' },
        { text: p.checkpoint, class: 'num mono' },
        { text: fmt.int(p.lag), class: 'num' },
        { text: fmt.rate(p.eventsPerSecond), class: 'num' },
        { text: `${p.generation} (v${p.version})`, class: 'num' },
        { build: () => rebuildProgress(p.rebuild), sig: JSON.stringify(p.rebuild) },
        { text: fmt.int(p.parked), class: 'num' },
      ];
      if (admin) cells.push({ build: () => projectionButtons(p, act), sig: p.state, class: 'actions' });
      return cells;
    }, (row, p) => row.setAttribute('data-projection', p.name));
  }

  function projectionName(p) {
    return el('div', {},
      el('span', { class: 'mono strong' }, p.name),
      p.lastError ? el('p', { class: 'error-text' },
        p.failedPosition ? [link(eventHref(p.failedPosition), `at ${p.failedPosition}`), ': '] : null,
        p.lastError) : null);
  }

  function rebuildProgress(rebuild) {
    if (!rebuild) return el('span', { class: 'muted' }, '—');
    const done = Number(rebuild.checkpoint);
    const total = Math.max(1, Number(rebuild.head));
    const percent = Math.min(100, Math.floor((done / total) * 100));
    const eta = rebuild.etaSeconds != null ? `ETA ${fmt.duration(rebuild.etaSeconds)}` : 'ETA unknown';
    return el('div', { class: 'rebuild' },
      el('progress', { max: String(total), value: String(Math.min(done, total)), 'aria-label': `Rebuild of generation ${rebuild.generation}` }),
      el('span', { class: 'rebuild-text' }, `gen ${rebuild.generation}: ${percent}% · ${eta}`));
  }

  function projectionButtons(p, act) {
    const name = p.name;
    const make = (kind, label) => adminButton(label, {
      class: `button button-small projection-${kind}`,
      'data-projection': name,
      'aria-label': `${label} ${name}`,
      on: { click: () => act(kind, name) },
    });
    return el('div', { class: 'button-row' },
      p.state === 'RUNNING' ? make('pause', 'Pause') : null,
      p.state === 'PAUSED' || p.state === 'FAILED' ? make('resume', 'Resume') : null,
      p.state !== 'REBUILDING' ? make('rebuild', 'Rebuild') : null);
  }

  function renderLagPlot(plot, samples) {
    const names = [...new Set(samples.flatMap((s) => s.lags.map((l) => l.name)))].sort();
    const series = names.map((name, i) => ({
      label: name,
      color: PALETTE[i % PALETTE.length],
      values: samples.map((s) => {
        const lag = s.lags.find((l) => l.name === name);
        return lag ? Number(lag.lag) : null;
      }),
    }));
    plot.update(sampleTimes(samples), series);
  }

  const sectionParts = new WeakMap();

  // One keyed sub-section per owner (projection, process, webhook) with its own table.
  function renderDetailSections(container, owners, { keyOf, idOf, titleOf, listOf, columns, rowKey, cellsOf, emptyText, showEmpty }) {
    const emptyTextOf = typeof emptyText === 'function' ? emptyText : () => emptyText;
    const visible = showEmpty ? owners : owners.filter((o) => listOf(o).length > 0);
    syncChildren(container, visible, keyOf, (owner) => {
      const parts = { ...dataTable(columns, { caption: titleOf(owner) }), empty: emptyNote('') };
      const node = el('section', { id: idOf(owner), class: 'detail-section', 'aria-label': titleOf(owner) },
        el('h3', {}, titleOf(owner)), el('div', { class: 'table-wrap' }, parts.table), parts.empty);
      sectionParts.set(node, parts);
      return node;
    }, (node, owner) => {
      const list = listOf(owner);
      const parts = sectionParts.get(node);
      parts.empty.hidden = list.length > 0;
      parts.empty.textContent = emptyTextOf(owner);
      parts.table.hidden = list.length === 0;
      syncTable(parts.tbody, list, rowKey, (item) => cellsOf(owner, item));
    });
  }

  function renderParkedEvents(container, projections, lists, admin, act) {
    const columns = ['Position', 'Stream', 'Type', 'Error', ['Attempts', 'num'], 'Parked at', admin ? 'Actions' : null].filter(Boolean);
    renderDetailSections(container, projections, {
      keyOf: (p) => p.name,
      idOf: (p) => `parked-${p.name}`,
      titleOf: (p) => `Projection ${p.name}`,
      listOf: (p) => lists.get(p) || [],
      columns,
      rowKey: (e) => e.position,
      // Readers see the count in the table above but may not list the events.
      emptyText: (p) => (Number(p.parked) > 0 && !admin
        ? `${fmt.int(p.parked)} parked; listing them needs the admin role.`
        : 'No parked events.'),
      showEmpty: true,
      cellsOf: (p, e) => {
        const cells = [
          { build: () => link(eventHref(e.position), e.position, { class: 'mono' }), sig: e.position, class: 'num' },
          { build: () => link(streamHref(e.streamId), e.streamId, { class: 'mono' }), sig: e.streamId },
          e.eventType,
          { text: e.error, class: 'error-text' },
          { text: e.attempts, class: 'num' },
          { build: () => timeEl(e.parkedAt), sig: e.parkedAt },
        ];
        if (admin) {
          cells.push({
            build: () => el('div', { class: 'button-row' },
              adminButton('Retry', { class: 'button button-small parked-retry', 'data-projection': p.name, 'data-position': e.position, 'aria-label': `Retry position ${e.position} in ${p.name}`, on: { click: () => act('retry', p.name, e.position) } }),
              adminButton('Skip', { class: 'button button-small parked-skip', 'data-projection': p.name, 'data-position': e.position, 'aria-label': `Skip position ${e.position} in ${p.name}`, on: { click: () => act('skip', p.name, e.position) } })),
            sig: 'actions',
            class: 'actions',
          });
        }
        return cells;
      },
    });
  }

  function processRow(p) {
    const projection = p.projection || {};
    return [
      { text: p.name, class: 'mono strong' },
      { build: () => (projection.state ? stateBadge(projection.state) : el('span', { class: 'muted' }, '—')), sig: projection.state },
      { text: projection.checkpoint ?? '—', class: 'num mono' },
      { text: fmt.int(projection.lag), class: 'num' },
      { text: fmt.int(p.outbox), class: 'num' },
      { text: fmt.int(p.deadlines), class: 'num' },
      { build: () => timeEl(p.nextDeadlineAt), sig: p.nextDeadlineAt },
      { text: fmt.int(p.parked), class: 'num' },
      { text: fmt.int(p.sent), class: 'num' },
      { text: fmt.int(p.rejected), class: 'num' },
    ];
  }

  function renderParkedCommands(container, processes, lists, act) {
    const columns = ['Event', ['Index', 'num'], 'Instance', 'Command', 'Error', ['Attempts', 'num'], 'Parked at', 'Actions'];
    renderDetailSections(container, processes, {
      keyOf: (p) => p.name,
      idOf: (p) => `parked-commands-${p.name}`,
      titleOf: (p) => `Parked commands of ${p.name}`,
      listOf: (p) => lists.get(p) || [],
      columns,
      rowKey: (c) => `${c.position}/${c.index}`,
      emptyText: 'No parked commands.',
      cellsOf: (p, c) => [
        { build: () => link(eventHref(c.position), c.position, { class: 'mono' }), sig: c.position, class: 'num' },
        { text: c.index, class: 'num' },
        { text: c.instance, class: 'mono' },
        { build: () => el('details', {}, el('summary', {}, 'Show'), el('pre', { class: 'code small' }, c.command)), sig: c.command },
        { text: c.error, class: 'error-text' },
        { text: c.attempts, class: 'num' },
        { build: () => timeEl(c.parkedAt), sig: c.parkedAt },
        {
          build: () => el('div', { class: 'button-row' },
            adminButton('Retry', { class: 'button button-small command-retry', 'data-process': p.name, 'aria-label': `Retry command ${c.position}/${c.index}`, on: { click: () => act('retry', p.name, c) } }),
            adminButton('Skip', { class: 'button button-small command-skip', 'data-process': p.name, 'aria-label': `Skip command ${c.position}/${c.index}`, on: { click: () => act('skip', p.name, c) } })),
          sig: 'actions',
          class: 'actions',
        },
      ],
    });
  }

  function webhookRow(w) {
    const filters = [...w.categories.map((c) => `category ${c}`), ...w.eventTypes.map((t) => `type ${t}`)];
    return [
      { text: w.id, class: 'mono strong' },
      { text: w.url, class: 'mono break' },
      filters.length ? filters.join(', ') : 'all events',
      { text: fmt.int(w.pending), class: 'num' },
      { text: fmt.int(w.lag), class: 'num' },
      { text: fmt.int(w.delivered), class: 'num' },
      { text: fmt.int(w.failures), class: 'num' },
      { text: fmt.int(w.deadLetters), class: 'num' },
      { text: w.lastError || '—', class: w.lastError ? 'error-text' : 'muted' },
    ];
  }

  function renderDeadLetters(container, webhooks, lists, redrive) {
    const columns = ['Position', 'Error', ['Attempts', 'num'], 'Dead since', 'Actions'];
    renderDetailSections(container, webhooks, {
      keyOf: (w) => w.id,
      idOf: (w) => `dead-letters-${w.id}`,
      titleOf: (w) => `Dead letters of ${w.id}`,
      listOf: (w) => lists.get(w) || [],
      columns,
      rowKey: (d) => d.position,
      emptyText: 'No dead letters.',
      cellsOf: (w, d) => [
        { build: () => link(eventHref(d.position), d.position, { class: 'mono' }), sig: d.position, class: 'num' },
        { text: d.error, class: 'error-text' },
        { text: d.attempts, class: 'num' },
        { build: () => timeEl(d.deadAt), sig: d.deadAt },
        {
          build: () => adminButton('Retry', { class: 'button button-small webhook-redrive', 'data-webhook': w.id, 'data-position': d.position, 'aria-label': `Retry delivery of position ${d.position} to ${w.id}`, on: { click: () => redrive(w.id, d.position) } }),
          sig: 'actions',
          class: 'actions',
        },
      ],
    });
  }

  // ---------------------------------------------------------------- audit

  const EXPORT_FIELDS = [
    // [id, query parameter, label, hint]
    ['export-stream', 'stream', 'Stream ids', 'comma-separated'],
    ['export-category', 'category', 'Categories', 'comma-separated'],
    ['export-type', 'type', 'Event types', 'comma-separated'],
    ['export-from', 'from_position', 'From position', 'inclusive'],
    ['export-to', 'to_position', 'To position', 'inclusive'],
    ['export-since', 'since', 'Recorded since', 'RFC 3339, inclusive'],
    ['export-until', 'until', 'Recorded until', 'RFC 3339, exclusive'],
    ['export-actor', 'actor', 'Actors', 'comma-separated'],
    ['export-correlation', 'correlation_id', 'Correlation ids', 'comma-separated UUIDs'],
  ];
  const EXPORT_EXTENSIONS = { ndjson: 'ndjson', csv: 'csv', cloudevents: 'cloudevents.jsonl' };
  const SIGNING_QUERY = `query ExportKey { overview(lastSeconds: 1) { exportPublicKey } }`;

  function auditView(ctx) {
    pageHeader(ctx, 'Audit');
    const admin = isAdmin();
    const format = el('select', { id: 'export-format' },
      el('option', { value: 'ndjson' }, 'NDJSON (manifest included)'),
      el('option', { value: 'csv' }, 'CSV'),
      el('option', { value: 'cloudevents' }, 'CloudEvents'));
    const inputs = EXPORT_FIELDS.map(([id, param, label, hint]) => ({
      param,
      field: el('div', { class: 'field' },
        el('label', { for: id }, label, ' ', el('span', { class: 'hint-inline' }, `(${hint})`)),
        el('input', {
          id,
          type: 'text',
          autocomplete: 'off',
          spellcheck: 'false',
          inputmode: param.endsWith('_position') ? 'numeric' : null,
        })),
    }));
    const result = el('p', { id: 'export-result', class: 'action-status', role: 'status' });
    const form = el('form', { id: 'export-form', class: 'export-form' },
      el('div', { class: 'field' }, el('label', { for: 'export-format' }, 'Format'), format),
      inputs.map((i) => i.field),
      el('div', { class: 'form-actions' },
        admin
          ? el('button', { id: 'export-download', type: 'submit', class: 'button button-primary', 'data-requires': 'admin' }, 'Download export')
          : el('p', { class: 'muted' }, 'Downloading an export needs the admin role.'),
        result));
    const publicKey = el('p', { id: 'export-public-key', class: 'mono break' }, 'Loading…');
    const command = el('pre', { class: 'code', id: 'export-verify-command', tabindex: '0' });

    ctx.root.append(el('div', { class: 'columns columns-wide-left' },
      section('Export the log', { id: 'export-panel' },
        el('p', { class: 'hint' }, 'Every event carries its hashes, so the file can be checked on its own. Empty fields do not filter; filters combine with AND.'),
        form),
      section('Verify an export', { id: 'verify-panel' },
        el('h3', {}, 'Signing key'),
        publicKey,
        el('h3', {}, 'Command'),
        el('p', {}, 'Check a downloaded file with the annals binary:'),
        command,
        el('p', { class: 'hint' }, 'Add ', el('code', {}, '--data-dir DIR'), ' on a machine holding the data directory to also compare every event with the log. Only NDJSON carries its manifest over HTTP; CSV and CloudEvents downloads have no manifest (use ', el('code', {}, 'annals export'), ' for those).'))));

    const verify = { file: 'annals-export.ndjson', key: null };
    const showCommand = () => {
      command.textContent = `annals verify ${verify.file}${verify.key ? ` --public-key ${verify.key}` : ''}`;
    };
    showCommand();

    ctx.run(async () => {
      const { overview } = await gql(SIGNING_QUERY);
      if (!ctx.alive) return;
      verify.key = overview.exportPublicKey || null;
      if (verify.key) publicKey.textContent = verify.key;
      else publicKey.replaceChildren('exports are not signed: start the server with ', el('code', {}, '--export-signing-key'));
      publicKey.className = verify.key ? 'mono break' : 'muted';
      showCommand();
    });

    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (!admin) return;
      const params = new URLSearchParams({ format: format.value });
      for (const { param, field } of inputs) {
        const value = $('input', field).value.trim();
        if (value) params.set(param, value);
      }
      const name = `annals-export-${new Date().toISOString().replace(/[:.]/g, '-')}.${EXPORT_EXTENSIONS[format.value]}`;
      const submit = $('#export-download');
      submit.disabled = true;
      result.textContent = 'Exporting…';
      ctx.run(async () => {
        try {
          const size = await downloadExport(params, name);
          result.textContent = `Saved ${name} (${fmt.int(size)} bytes).`;
          verify.file = name;
          showCommand();
        } catch (error) {
          result.textContent = 'The export failed.';
          throw error;
        } finally {
          submit.disabled = false;
        }
      });
    });
  }

  // /export needs the Authorization header, which a plain link cannot send: fetch it and
  // save the blob through a temporary <a download>.
  async function downloadExport(params, name) {
    const response = await send(`/export?${params}`, { headers: authHeaders() });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw firstError(body) || httpError(response);
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const anchor = el('a', { href: url, download: name, hidden: true });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    return blob.size;
  }

  // ---------------------------------------------------------------- sign-in and start

  const VIEWER_QUERY = 'query Viewer { viewer { id role } }';

  function showSignIn(message = '') {
    session.viewer = null;
    renderSession();
    document.title = 'Sign in · Annals';
    const input = el('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
    const error = el('p', { id: 'signin-error', class: 'signin-error', role: 'alert' }, message);
    const submit = el('button', { id: 'signin-submit', type: 'submit', class: 'button button-primary' }, 'Sign in');
    const form = el('form', { id: 'signin', class: 'signin-form' },
      el('div', { class: 'field' }, el('label', { for: 'api-key' }, 'API key'), input),
      error,
      submit);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      signIn(input, error, submit);
    });
    $('#view').replaceChildren(el('div', { class: 'signin-card panel' },
      el('h1', {}, 'Sign in'),
      el('p', { class: 'muted' }, 'This server requires an API key. It is kept for this browser tab only.'),
      form));
    input.focus();
  }

  async function signIn(input, error, submit) {
    const key = input.value.trim();
    if (!key) {
      error.textContent = 'Enter an API key.';
      input.focus();
      return;
    }
    submit.disabled = true;
    error.textContent = '';
    sessionStorage.setItem(STORAGE_KEY, key);
    try {
      const { viewer } = await gql(VIEWER_QUERY);
      openConsole(viewer);
    } catch (failure) {
      sessionStorage.removeItem(STORAGE_KEY);
      error.textContent = `${failure.code || 'ERROR'}: ${failure.message}`;
      submit.disabled = false;
      input.select();
    }
  }

  function renderSession() {
    const viewer = session.viewer;
    $('#topnav').hidden = !viewer;
    $('#session').hidden = !viewer;
    $('#viewer-role').textContent = viewer ? viewer.role.toLowerCase() : '';
    $('#viewer-id').textContent = viewer ? viewer.id : '';
    $('#signout')?.remove();
    if (viewer && storedKey()) {
      $('#session').append(button('Sign out', { id: 'signout', class: 'button button-small button-quiet', on: { click: () => signOut() } }));
    }
  }

  function openConsole(viewer) {
    session.viewer = viewer;
    clearError();
    renderSession();
    if (!session.listening) {
      session.listening = true;
      window.addEventListener('hashchange', () => route(true));
    }
    route();
  }

  function signOut(message = '') {
    leaveView();
    sessionStorage.removeItem(STORAGE_KEY);
    clearError();
    showSignIn(message);
  }

  async function boot() {
    $('#skip-link').addEventListener('click', (event) => {
      event.preventDefault();
      focusQuietly($('#main'));
    });
    try {
      const { viewer } = await gql(VIEWER_QUERY);
      openConsole(viewer);
    } catch (error) {
      if (error.code === 'UNAUTHENTICATED') {
        const hadKey = storedKey() != null;
        sessionStorage.removeItem(STORAGE_KEY);
        showSignIn(hadKey ? `${error.code}: ${error.message}` : '');
        return;
      }
      showSignIn();
      showError(error);
    }
  }

  boot().catch((error) => showError(error));
})();
