// CLADNet web console: plain JavaScript, no dependencies, no build step.
//
// Everything shown comes from the controller's REST API on this origin, called with the admin
// token as "Authorization: Bearer". The token lives in this tab's sessionStorage only; a
// "#token=..." fragment (never sent to the server) may prefill it and is removed from the
// address bar at once. The page polls every 2 s. The DOM is built with textContent and
// attributes only (no HTML parsing of data), and the CSP forbids inline code.
'use strict';

(function () {
  const POLL_MS = 2000;
  const TOKEN_KEY = 'cladnet.console.token';
  const NET_KEY = 'cladnet.console.network';
  // Relative to /console/, so a reverse proxy may mount the controller under a prefix.
  const API = '../';
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  const state = {
    token: '',
    networks: [],
    selected: '',
    timer: 0,
    polling: false,
    again: false,
    polls: 0,
    rendered: {},
  };

  // ---- DOM helpers -------------------------------------------------------------------------

  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else e.setAttribute(k, String(v));
    }
    return e;
  }

  function append(e, children) {
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function el(tag, attrs, ...children) {
    return append(setAttrs(document.createElement(tag), attrs), children);
  }

  function svg(tag, attrs, ...children) {
    return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
  }

  // Replaces a container's children only when what it shows changed, so elements stay put
  // (and clickable) between polls that bring nothing new.
  function renderInto(container, key, build) {
    const id = container.id;
    if (state.rendered[id] === key) return;
    state.rendered[id] = key;
    container.replaceChildren(...build());
  }

  // ---- Formatting --------------------------------------------------------------------------

  const num = (v) => Number(v || 0); // proto3 JSON: 64-bit integers are strings, zeros absent

  function bytes(v) {
    let n = num(v);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let u = 0;
    while (n >= 1024 && u < units.length - 1) {
      n /= 1024;
      u += 1;
    }
    return (u === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + units[u];
  }

  function age(v) {
    const s = num(v);
    if (s < 0) return '\u2014';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function ipKey(ip) {
    return (ip || '').split('.').reduce((acc, o) => acc * 256 + Number(o || 0), 0);
  }

  function siteOf(p) {
    if (p.external) return 'external WireGuard';
    const d = p.details || {};
    const provider = d.providerName || '';
    const vpc = d.virtualNetworkId || '';
    if (!provider && !vpc) return 'unknown site';
    return (provider || '?') + ' / ' + (vpc || '?');
  }

  function status(message, isError) {
    const s = $('status');
    s.textContent = message || '';
    s.className = 'status' + (isError ? ' error' : '');
  }

  function live(text, kind) {
    const l = $('live');
    l.textContent = text;
    l.dataset.state = kind;
  }

  // ---- API ---------------------------------------------------------------------------------

  async function api(method, path, body) {
    const init = {
      method,
      cache: 'no-store',
      credentials: 'omit',
      headers: { Authorization: 'Bearer ' + state.token, Accept: 'application/json' },
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(API + path, init);
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : {};
    } catch (_) {
      data = null;
    }
    if (!res.ok) {
      const err = new Error((data && data.message) || res.status + ' ' + res.statusText);
      err.status = res.status;
      throw err;
    }
    return data || {};
  }

  const enc = encodeURIComponent;

  // ---- Token -------------------------------------------------------------------------------

  function readFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    const token = params.get('token');
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      params.delete('token');
    }
    const net = params.get('net');
    if (net) sessionStorage.setItem(NET_KEY, net);
    if (token) {
      // Keep the token out of the address bar and the history.
      const rest = params.toString();
      history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    }
  }

  function showLogin(message) {
    clearTimeout(state.timer);
    state.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    $('app').hidden = true;
    $('sign-out').hidden = true;
    $('login').hidden = false;
    $('login-error').hidden = !message;
    $('login-error').textContent = message || '';
    live('not signed in', 'idle');
    $('token').focus();
  }

  function signedIn() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('sign-out').hidden = false;
    state.rendered = {};
    refresh();
  }

  // ---- Polling -----------------------------------------------------------------------------

  function schedule(ms) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, ms);
  }

  function refresh() {
    if (state.polling) {
      state.again = true;
      return;
    }
    poll();
  }

  async function poll() {
    clearTimeout(state.timer);
    if (!state.token) return;
    state.polling = true;
    try {
      const list = await api('GET', 'v1/cladnet');
      state.networks = list.cladnetSpecifications || [];
      if (!state.networks.some((n) => n.cladnetId === state.selected)) {
        const remembered = sessionStorage.getItem(NET_KEY) || '';
        const pick = state.networks.find((n) => n.cladnetId === remembered) || state.networks[0];
        state.selected = pick ? pick.cladnetId : '';
      }
      renderNetworks();
      if (state.selected) {
        const id = enc(state.selected);
        const [peers, stats, test] = await Promise.all([
          api('GET', 'v1/cladnet/' + id + '/peer'),
          api('GET', 'v1/cladnet/' + id + '/stats').catch(() => ({ nodes: [] })),
          api('GET', 'v1/test/cladnet/' + id + '/latest').catch((e) => {
            if (e.status === 404) return null;
            throw e;
          }),
        ]);
        const network = state.networks.find((n) => n.cladnetId === state.selected);
        renderNetwork(network, peers.peers || [], stats.nodes || [], test);
      } else {
        $('network').hidden = true;
        $('empty').hidden = !$('create').hidden;
      }
      state.polls += 1;
      document.body.dataset.polls = String(state.polls);
      live('live \u00b7 updated ' + new Date().toLocaleTimeString(), 'ok');
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        state.polling = false;
        showLogin('The controller refused the token: ' + e.message);
        return;
      }
      live('controller unreachable: ' + e.message, 'error');
    } finally {
      state.polling = false;
      if (state.token) schedule(state.again ? 0 : POLL_MS);
      state.again = false;
    }
  }

  function select(id) {
    state.selected = id;
    sessionStorage.setItem(NET_KEY, id);
    history.replaceState(null, '', location.pathname + location.search + '#net=' + enc(id));
    $('delete-confirm').hidden = true;
    renderNetworks();
    refresh();
  }

  // ---- Rendering ---------------------------------------------------------------------------

  function renderNetworks() {
    const key = JSON.stringify([state.selected, state.networks]);
    renderInto($('networks'), key, () =>
      state.networks.map((n) => {
        const li = el(
          'li',
          {
            'data-id': n.cladnetId,
            class: n.cladnetId === state.selected ? 'selected' : null,
            title: n.description || null,
          },
          el('span', { class: 'name', text: n.name || n.cladnetId }),
          el('span', { class: 'cidr mono', text: n.ipv4AddressSpace }),
        );
        li.addEventListener('click', () => select(n.cladnetId));
        return li;
      }),
    );
    $('no-networks').hidden = state.networks.length > 0;
  }

  function statsIndex(nodes) {
    const byNode = new Map();
    for (const n of nodes) {
      const peers = new Map();
      for (const p of n.peers || []) peers.set(p.hostId, p);
      byNode.set(n.hostId, { reportedAt: num(n.reportedAt), peers });
    }
    return byNode;
  }

  function renderNetwork(network, peers, statNodes, test) {
    $('empty').hidden = true;
    $('network').hidden = false;
    const n = network || { cladnetId: state.selected };
    $('net-title').textContent = (n.name || n.cladnetId) + (n.name && n.name !== n.cladnetId ? ' (' + n.cladnetId + ')' : '');
    $('net-meta').textContent = [
      n.ipv4AddressSpace,
      'encryption ' + (n.encryption || 'always'),
      'rule ' + (n.ruleType || 'basic'),
      n.description,
    ]
      .filter(Boolean)
      .join(' \u00b7 ');
    $('network').dataset.id = n.cladnetId;
    peers.sort((a, b) => (a.hostName || a.hostId).localeCompare(b.hostName || b.hostId) || ipKey(a.ip) - ipKey(b.ip));
    $('peer-count').textContent = peers.length + (peers.length === 1 ? ' peer' : ' peers');
    $('no-peers').hidden = peers.length > 0;
    const stats = statsIndex(statNodes);
    const names = new Map(peers.map((p) => [p.hostId, p.hostName || p.hostId]));
    renderPeers(peers, stats, names);
    renderLinks(peers, stats, names);
    renderTopology(peers);
    renderMatrix(test, names);
  }

  function renderPeers(peers, stats, names) {
    const key = JSON.stringify([peers, [...stats.entries()].map(([k, v]) => [k, [...v.peers.values()]])]);
    renderInto($('peers').tBodies[0], key, () =>
      peers.map((p) => {
        const s = stats.get(p.hostId);
        let tx = null;
        let rx = null;
        let handshake = -1;
        if (s) {
          tx = 0;
          rx = 0;
          for (const ps of s.peers.values()) {
            tx += num(ps.txBytes);
            rx += num(ps.rxBytes);
            const h = num(ps.handshakeAgeSeconds);
            if (h >= 0 && (handshake < 0 || h < handshake)) handshake = h;
          }
        }
        const links = (p.links || [])
          .slice()
          .sort((a, b) => (names.get(a.hostId) || '').localeCompare(names.get(b.hostId) || ''))
          .map((l) =>
            el('span', {
              class: 'link ' + l.mode,
              'data-peer': l.hostId,
              'data-mode': l.mode,
              title: (l.peerScope === 'intra' ? 'same site' : 'across sites') + ', via ' + (l.selectedEndpoint || 'no endpoint yet'),
              text: (names.get(l.hostId) || l.hostName || l.hostId) + ' ' + l.mode,
            }),
          );
        const d = p.details || {};
        return el(
          'tr',
          { 'data-host-id': p.hostId, 'data-host-name': p.hostName, 'data-state': p.state },
          el('td', { class: 'host' },
            el('div', { text: p.hostName || p.hostId }),
            el('div', { class: 'node mono', text: p.hostId })),
          el('td', { class: 'state state-' + p.state, text: p.state }),
          el('td', { class: 'ip mono', text: p.ip }),
          el('td', { class: 'endpoints mono' },
            el('div', { class: 'public', title: 'public (as the reflector saw it)', text: p.publicEndpoint || '\u2014' }),
            el('div', { class: 'private', title: 'private', text: p.privateEndpoint || '\u2014' })),
          el('td', { class: 'site', title: [d.regionId, d.availabilityZoneId, d.subnetId].filter(Boolean).join(' / ') || null, text: siteOf(p) }),
          el('td', { class: 'dataplane', title: p.dataplaneReason || null, text: p.dataplane || (p.external ? 'wireguard (external)' : '\u2014') }),
          el('td', { class: 'links' }, ...links),
          el('td', { class: 'num tx', 'data-bytes': tx, title: s ? 'reported ' + age(Math.floor(Date.now() / 1000) - s.reportedAt) : 'no report from this agent', text: tx === null ? '\u2014' : bytes(tx) }),
          el('td', { class: 'num rx', 'data-bytes': rx, text: rx === null ? '\u2014' : bytes(rx) }),
          el('td', { class: 'handshake', 'data-age': handshake, text: age(handshake) }),
        );
      }),
    );
  }

  // The path a link takes as its agent reported it: direct, relay via (the relay's name),
  // connecting or unreachable; a dash when not known (no report, or an agent before relays).
  function pathCell(ps, names) {
    const path = ps && ps.path ? ps.path : '';
    const via = path === 'relay' && ps.via ? ps.via : '';
    const text = !path ? '\u2014' : via ? path + ' via ' + (names.get(via) || via) : path;
    return el('td', { class: 'path' + (path ? ' path-' + path : ''), 'data-path': path, 'data-via': via, title: via ? 'relay ' + via : null, text });
  }

  function renderLinks(peers, stats, names) {
    const rows = [];
    for (const p of peers) {
      const s = stats.get(p.hostId);
      for (const l of (p.links || []).slice().sort((a, b) => (names.get(a.hostId) || '').localeCompare(names.get(b.hostId) || ''))) {
        const ps = s ? s.peers.get(l.hostId) : undefined;
        rows.push(
          el(
            'tr',
            { 'data-from': p.hostId, 'data-to': l.hostId, 'data-mode': l.mode },
            el('td', { text: names.get(p.hostId) }),
            el('td', { text: names.get(l.hostId) || l.hostName || l.hostId }),
            el('td', { class: 'mode ' + l.mode, text: l.mode }),
            el('td', { text: l.peerScope === 'intra' ? 'same site' : 'across sites' }),
            el('td', { class: 'mono', text: l.selectedEndpoint || '\u2014' }),
            pathCell(ps, names),
            el('td', { class: 'num tx', 'data-bytes': ps ? num(ps.txBytes) : null, text: ps ? bytes(ps.txBytes) : '\u2014' }),
            el('td', { class: 'num rx', 'data-bytes': ps ? num(ps.rxBytes) : null, text: ps ? bytes(ps.rxBytes) : '\u2014' }),
            el('td', { class: 'handshake', text: ps ? age(ps.handshakeAgeSeconds) : '\u2014' }),
            el('td', { text: ps ? age(ps.lastRxAgeSeconds) : '\u2014' }),
            el('td', { class: 'num path-mtu', text: ps && num(ps.pathMtu) > 0 ? String(num(ps.pathMtu)) : '\u2014' }),
          ),
        );
      }
    }
    const key = JSON.stringify(rows.map((r) => r.textContent + r.dataset.mode));
    renderInto($('links').tBodies[0], key, () => rows);
  }

  function renderTopology(peers) {
    const sites = new Map();
    for (const p of peers) {
      const k = siteOf(p);
      if (!sites.has(k)) sites.set(k, []);
      sites.get(k).push(p);
    }
    const siteNames = [...sites.keys()].sort();
    const key = JSON.stringify(peers.map((p) => [p.hostId, p.hostName, p.ip, p.state, siteOf(p), (p.links || []).map((l) => [l.hostId, l.mode])]));
    renderInto($('topology'), key, () => {
      if (peers.length === 0) return [el('p', { class: 'meta', text: 'No peers yet: start agents with a join token of this network.' })];
      const perRow = Math.max(1, Math.min(siteNames.length, 4));
      const boxW = 210;
      const gapX = 90;
      const gapY = 40;
      const pad = 20;
      const head = 30;
      const step = 64;
      const most = Math.max(...siteNames.map((s) => sites.get(s).length));
      const boxH = head + most * step + 6;
      const rows = Math.ceil(siteNames.length / perRow);
      const width = pad * 2 + perRow * boxW + (perRow - 1) * gapX;
      const height = pad * 2 + rows * boxH + (rows - 1) * gapY;
      const pos = new Map();
      const boxes = [];
      siteNames.forEach((name, i) => {
        const x0 = pad + (i % perRow) * (boxW + gapX);
        const y0 = pad + Math.floor(i / perRow) * (boxH + gapY);
        boxes.push(
          svg('g', { class: 'site', 'data-site': name },
            svg('rect', { class: 'site-box', x: x0, y: y0, width: boxW, height: boxH, rx: 10 }),
            svg('text', { class: 'site-label', x: x0 + 12, y: y0 + 19, text: name })),
        );
        sites.get(name).forEach((p, j) => {
          pos.set(p.hostId, { x: x0 + 36, y: y0 + head + j * step + step / 2, site: name, peer: p });
        });
      });
      const edges = [];
      const seen = new Set();
      for (const p of peers) {
        for (const l of p.links || []) {
          const pair = [p.hostId, l.hostId].sort().join('\u0000');
          if (seen.has(pair)) continue;
          seen.add(pair);
          const a = pos.get(p.hostId);
          const b = pos.get(l.hostId);
          if (!a || !b) continue;
          let d;
          if (a.site === b.site) {
            // Same column: bow out to the left so in-site links stay visible.
            const bow = 26 + Math.abs(a.y - b.y) * 0.35;
            d = `M ${a.x} ${a.y} C ${a.x - bow} ${a.y}, ${b.x - bow} ${b.y}, ${b.x} ${b.y}`;
          } else {
            d = `M ${a.x} ${a.y} L ${b.x} ${b.y}`;
          }
          const label = (a.peer.hostName || a.peer.hostId) + ' \u2194 ' + (b.peer.hostName || b.peer.hostId) + ': ' + l.mode;
          edges.push(svg('path', { class: 'edge ' + l.mode, d, 'data-a': p.hostId, 'data-b': l.hostId, 'data-mode': l.mode }, svg('title', { text: label })));
        }
      }
      const nodes = [...pos.values()].map(({ x, y, peer }) =>
        svg('g', { class: 'node ' + peer.state, 'data-host-id': peer.hostId, 'data-state': peer.state },
          svg('circle', { cx: x, cy: y, r: 13 }),
          svg('text', { x: x + 22, y: y - 2, text: peer.hostName || peer.hostId }),
          svg('text', { class: 'ip', x: x + 22, y: y + 13, text: peer.ip + ' \u00b7 ' + peer.state }),
          svg('title', { text: peer.hostId })),
      );
      return [
        svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'overlay topology' },
          ...boxes, ...edges, ...nodes),
      ];
    });
  }

  function renderMatrix(test, names) {
    const meta = $('test-meta');
    if (!test) {
      meta.textContent = '\u00b7 no connectivity test yet';
      delete $('matrix').dataset.testId;
      delete $('matrix').dataset.complete;
      renderInto($('matrix'), 'none', () => []);
      return;
    }
    const hosts = (test.hostIds || []).slice().sort((a, b) => (names.get(a) || a).localeCompare(names.get(b) || b));
    const reported = (test.reportedHostIds || []).length;
    meta.textContent = '\u00b7 test ' + test.testId + ', ' + (test.trialCount || 0) + ' pings per pair, ' +
      (test.complete ? 'complete' : 'waiting for ' + (hosts.length - reported) + ' of ' + hosts.length + ' peers') +
      '; average RTT';
    $('matrix').dataset.testId = test.testId;
    $('matrix').dataset.complete = String(Boolean(test.complete));
    const results = new Map();
    for (const r of test.results || []) results.set(r.sourceHostId + '\u0000' + r.destinationHostId, r);
    renderInto($('matrix'), JSON.stringify([test, [...names]]), () => {
      const name = (h) => names.get(h) || h;
      const header = el('tr', {}, el('th', { text: 'from \\ to' }), ...hosts.map((h) => el('th', { 'data-host-id': h, text: name(h) })));
      const rows = hosts.map((src) =>
        el('tr', { 'data-src': src },
          el('th', { class: 'row', text: name(src) }),
          ...hosts.map((dst) => {
            if (src === dst) return el('td', { class: 'self', text: '\u2014' });
            const r = results.get(src + '\u0000' + dst);
            if (!r) return el('td', { 'data-src': src, 'data-dst': dst, class: 'pending', text: '\u2026' });
            const received = num(r.packetsReceived);
            const loss = Number(r.packetLoss || 0);
            const avg = Number(r.avgRttMs || 0);
            const title = `min ${Number(r.minRttMs || 0).toFixed(3)} / avg ${avg.toFixed(3)} / max ${Number(r.maxRttMs || 0).toFixed(3)} ms, stddev ${Number(r.stddevRttMs || 0).toFixed(3)}; ${received}/${num(r.packetsSent)} replies`;
            if (received === 0) return el('td', { 'data-src': src, 'data-dst': dst, class: 'lost', title, text: 'lost' });
            return el('td', { 'data-src': src, 'data-dst': dst, 'data-avg': avg, class: loss > 0 ? 'lossy' : null, title,
              text: avg.toFixed(2) + ' ms' + (loss > 0 ? ' (' + Math.round(loss * 100) + '% loss)' : '') });
          })));
      return [el('table', {}, el('thead', {}, header), el('tbody', {}, ...rows))];
    });
  }

  // ---- Actions -----------------------------------------------------------------------------

  async function openCreate() {
    $('create').hidden = false;
    $('empty').hidden = true;
    $('create-error').hidden = true;
    for (const id of ['create-id', 'create-name', 'create-cidr', 'create-description']) $(id).value = '';
    $('create-hint').textContent = '';
    $('create-cidr-options').replaceChildren();
    $('create-id').focus();
    try {
      // The recommender avoids the host subnets every peer of every network reported, as
      // "auto" does, sized for 254 hosts.
      const cidrs = new Set();
      for (const n of state.networks) {
        const r = await api('GET', 'v1/cladnet/' + enc(n.cladnetId) + '/peer').catch(() => ({ peers: [] }));
        for (const p of r.peers || []) if (p.hostPrivateIpv4Cidr) cidrs.add(p.hostPrivateIpv4Cidr);
      }
      const r = await api('POST', 'v1/cladnet/availableIPv4AddressSpaces', { ipv4Cidrs: [...cidrs], hosts: 254 });
      const cidr = $('create-cidr');
      if (!cidr.value) cidr.value = r.recommendedIpv4PrivateAddressSpace || '';
      cidr.dataset.recommended = r.recommendedIpv4PrivateAddressSpace || '';
      const all = [r.recommendedIpv4PrivateAddressSpace, ...(r.addressSpace10s || []), ...(r.addressSpace172s || []), ...(r.addressSpace192s || [])];
      $('create-cidr-options').replaceChildren(...[...new Set(all.filter(Boolean))].map((c) => el('option', { value: c })));
      $('create-hint').textContent = 'Recommended by the controller: clashes with none of the ' + cidrs.size +
        ' host subnet(s) the peers of all networks reported. Edit it if you like.';
    } catch (e) {
      $('create-hint').textContent = 'No recommendation: ' + e.message;
    }
  }

  function closeCreate() {
    $('create').hidden = true;
    if (!state.selected) $('empty').hidden = false;
  }

  async function submitCreate(ev) {
    ev.preventDefault();
    const button = $('create-submit');
    button.disabled = true;
    $('create-error').hidden = true;
    const body = {
      cladnetId: $('create-id').value.trim(),
      name: $('create-name').value.trim(),
      ipv4AddressSpace: $('create-cidr').value.trim(),
      encryption: $('create-encryption').value,
      ruleType: $('create-rule').value,
      description: $('create-description').value.trim(),
    };
    try {
      const n = await api('POST', 'v1/cladnet', body);
      closeCreate();
      status('Network ' + n.cladnetId + ' created with ' + n.ipv4AddressSpace + '. Agents join it with a join token (cladnet token create ' + n.cladnetId + ').');
      select(n.cladnetId);
    } catch (e) {
      $('create-error').textContent = e.message;
      $('create-error').hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  function askDelete() {
    const n = state.networks.find((x) => x.cladnetId === state.selected);
    if (!n) return;
    const peers = $('peers').tBodies[0].querySelectorAll('tr[data-host-id]').length;
    $('delete-question').textContent = 'Delete network ' + n.cladnetId + ' (' + n.ipv4AddressSpace + ') with its ' + peers +
      ' peer(s), addresses, join tokens and tests? Its agents stop.';
    $('delete-confirm').dataset.id = n.cladnetId;
    $('delete-confirm').hidden = false;
  }

  async function confirmDelete() {
    const id = $('delete-confirm').dataset.id;
    $('delete-confirm').hidden = true;
    try {
      await api('DELETE', 'v1/cladnet/' + enc(id));
      status('Network ' + id + ' deleted.');
      if (state.selected === id) {
        state.selected = '';
        sessionStorage.removeItem(NET_KEY);
        history.replaceState(null, '', location.pathname + location.search);
      }
      refresh();
    } catch (e) {
      status('Could not delete ' + id + ': ' + e.message, true);
    }
  }

  async function runTest() {
    const id = state.selected;
    const button = $('run-test');
    button.disabled = true;
    try {
      const t = await api('POST', 'v1/test/cladnet/' + enc(id) + '/type/CONNECTIVITY', { trialCount: 3 });
      status('Connectivity test ' + t.testId + ' started among ' + (t.hostIds || []).length + ' peer(s).');
      refresh();
    } catch (e) {
      status('Could not start a connectivity test: ' + e.message, true);
    } finally {
      setTimeout(() => {
        button.disabled = false;
      }, 1500);
    }
  }

  // ---- Start -------------------------------------------------------------------------------

  function start() {
    readFragment();
    $('login-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      state.token = $('token').value.trim();
      $('token').value = '';
      try {
        await api('GET', 'v1/cladnet');
        sessionStorage.setItem(TOKEN_KEY, state.token);
        signedIn();
      } catch (e) {
        showLogin(e.status === 401 || e.status === 403 ? 'The controller refused this token.' : 'Controller unreachable: ' + e.message);
      }
    });
    $('sign-out').addEventListener('click', () => showLogin(''));
    $('new-network').addEventListener('click', openCreate);
    $('create-cancel').addEventListener('click', closeCreate);
    $('create-form').addEventListener('submit', submitCreate);
    $('delete-network').addEventListener('click', askDelete);
    $('delete-no').addEventListener('click', () => {
      $('delete-confirm').hidden = true;
    });
    $('delete-yes').addEventListener('click', confirmDelete);
    $('run-test').addEventListener('click', runTest);
    // A fragment typed into the address bar of an open page: no reload happens, so read it.
    window.addEventListener('hashchange', () => {
      const params = new URLSearchParams(location.hash.replace(/^#/, ''));
      const net = params.get('net');
      const token = params.get('token');
      readFragment();
      if (token && token !== state.token) {
        state.token = token;
        if (net) state.selected = net;
        signedIn();
      } else if (net && state.token && net !== state.selected) {
        select(net);
      }
    });
    state.selected = sessionStorage.getItem(NET_KEY) || '';
    state.token = sessionStorage.getItem(TOKEN_KEY) || '';
    if (state.token) signedIn();
    else showLogin('');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
