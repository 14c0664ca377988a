/* healthmon dashboard: reads the JSON API and refreshes itself every data-refresh-s seconds.
 *
 * Plain JavaScript, no build step; charts by uPlot (served by the app from node_modules).
 * window.healthmon exposes the charts (uPlot instances: .data holds what is plotted), the last
 * API answers and the page state, for tests and for curious operators.
 */
(() => {
  "use strict";

  /** Range label -> seconds; the API picks the step (and says which). */
  const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  const DEFAULT_RANGE = "1h";
  const METRICS = ["cpu_pct", "ram_used_pct", "disk_used_pct"];
  const SERVICE_CHART_HEIGHT = 200;
  const DRIVE_CHART_HEIGHT = 190;

  const body = document.body;
  const refreshS = Number(body.dataset.refreshS) || 5;
  const alertsUrl = body.dataset.alertsUrl || "";
  const chartsOn = body.dataset.charts === "yes" && typeof window.uPlot === "function";

  const hm = {
    /** name -> uPlot: "cpu_pct", "ram_used_pct", "disk_used_pct", "drive:<host>/<device>/<op>". */
    charts: {},
    /** The last answer of each API call the page makes. */
    data: { services: null, series: null, diskHealth: null, drives: {}, alerts: null },
    state: { selected: null, range: DEFAULT_RANGE, refreshS, chartsOn, refreshes: 0, lastRefresh: null, errors: [] },
    refresh: () => refresh(),
  };
  window.healthmon = hm;

  // ------------------------------------------------------------------ helpers

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJSON(url) {
    let resp;
    try {
      resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (err) {
      throw new HttpError(0, `${url}: API unreachable (${err.message})`);
    }
    let answer = null;
    try {
      answer = await resp.json();
    } catch (_) {
      // not JSON: the status line says enough
    }
    if (!resp.ok) {
      const detail = answer && answer.error ? answer.error.message : resp.statusText;
      throw new HttpError(resp.status, `${url}: ${resp.status} ${detail}`);
    }
    return answer;
  }

  /** An element with attributes (className, dataset, title, text...) and children. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else node[key] = value;
    }
    node.append(...children);
    return node;
  }

  function badge(word) {
    return el("span", { className: `badge ${word}`, text: word });
  }

  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(ts) {
    if (ts == null) return "—";
    const d = new Date(ts * 1000);
    return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }

  function fmtDateTime(ts) {
    if (ts == null) return "—";
    return `${new Date(ts * 1000).toISOString().slice(0, 10)} ${fmtTime(ts)}`;
  }

  function fmtPct(value) {
    return value == null ? "—" : value.toFixed(1);
  }

  function fmtDuration(s) {
    if (s == null) return "—";
    if (s < 90) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 5400) return `${(s / 60).toFixed(0)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }

  function fmtUs(us) {
    if (us == null) return "—";
    return us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(0)} µs`;
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get("range") in RANGES) hm.state.range = params.get("range");
    if (params.get("service")) hm.state.selected = params.get("service");
  }

  function writeHash() {
    const params = new URLSearchParams({ range: hm.state.range });
    if (hm.state.selected) params.set("service", hm.state.selected);
    history.replaceState(null, "", `#${params}`);
  }

  /** The server's "now" (from the last services answer), so the page and the API agree on ranges. */
  function serverNow() {
    const answer = hm.data.services;
    return answer && answer.now_ts != null ? answer.now_ts : Date.now() / 1000;
  }

  // ------------------------------------------------------------------ charts

  /** Draw a lone value between two gaps as a dot: a line needs two neighbours. */
  function loneValues(u, seriesIdx, show) {
    if (show) return null;
    const ys = u.data[seriesIdx];
    const idxs = [];
    for (let i = 0; i < ys.length; i++) {
      if (ys[i] != null && ys[i - 1] == null && ys[i + 1] == null) idxs.push(i);
    }
    return idxs.length ? idxs : null;
  }

  function line(label, stroke, width, extra = {}) {
    return { label, stroke, width, points: { filter: loneValues }, ...extra };
  }

  /** Time ticks in UTC, 24-hour clock; a day's date at midnight and when ticks are days apart. */
  function timeTicks(u, splits, axisIdx, space, incr) {
    return splits.map((ts) => {
      const d = new Date(ts * 1000);
      const day = `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
      const clock = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}${incr < 60 ? `:${pad(d.getUTCSeconds())}` : ""}`;
      if (incr >= 86400) return day;
      return ts % 86400 === 0 ? `${clock}\n${day}` : clock;
    });
  }

  function fmtUsTick(us) {
    return us >= 1000 ? `${+(us / 1000).toPrecision(3)} ms` : `${+us.toPrecision(3)} µs`;
  }

  function baseOptions(width, height) {
    return {
      width,
      height,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
    };
  }

  const timeSeries = { label: "time (UTC)", value: (u, ts) => (ts == null ? "—" : fmtDateTime(ts)) };

  function makeChart(name, container, options, data) {
    const width = container.clientWidth || 400;
    const chart = new uPlot({ ...baseOptions(width, options.height), ...options }, data, container);
    new ResizeObserver(() => {
      if (container.clientWidth && container.clientWidth !== chart.width) {
        chart.setSize({ width: container.clientWidth, height: chart.height });
      }
    }).observe(container);
    hm.charts[name] = chart;
    return chart;
  }

  function serviceChart(metric, container) {
    const blue = "31,111,235";
    return makeChart(metric, container, {
      height: SERVICE_CHART_HEIGHT,
      scales: { x: { time: true }, y: { range: [0, 100] } },
      series: [
        timeSeries,
        line("avg", `rgb(${blue})`, 2, { value: (u, v) => fmtPct(v) }),
        line("min", `rgba(${blue},0.45)`, 1, { value: (u, v) => fmtPct(v) }),
        line("max", `rgba(${blue},0.45)`, 1, { value: (u, v) => fmtPct(v) }),
      ],
      bands: [{ series: [3, 2], fill: `rgba(${blue},0.12)` }],
      axes: [{ values: timeTicks }, { values: (u, vals) => vals.map((v) => `${v}%`), size: 48 }],
    }, [[], [], [], []]);
  }

  function driveChart(name, container) {
    return makeChart(name, container, {
      height: DRIVE_CHART_HEIGHT,
      scales: { x: { time: true }, y: { distr: 3, log: 10 } },
      series: [
        timeSeries,
        line("p50", "#1a7f37", 1.5, { value: (u, v) => fmtUs(v) }),
        line("p95", "#bf8700", 1.5, { value: (u, v) => fmtUs(v) }),
        line("p99", "#cf222e", 2, { value: (u, v) => fmtUs(v) }),
        line("baseline p99", "#57606a", 1.5, { dash: [6, 4], value: (u, v) => fmtUs(v), points: { show: false } }),
        line("fleet median p99", "#8250df", 1.5, { dash: [2, 4], value: (u, v) => fmtUs(v), points: { show: false } }),
      ],
      axes: [{ values: timeTicks }, { values: (u, vals) => vals.map((v) => (v == null ? "" : fmtUsTick(v))), size: 64 }],
    }, [[], [], [], [], [], []]);
  }

  // ------------------------------------------------------------------ services table

  const servicesBody = document.querySelector("#services tbody");
  const rows = new Map(); // service -> <tr>

  function serviceRow(name) {
    const button = el("button", { type: "button", className: "service-name", text: name });
    const tr = el("tr", { dataset: { service: name } },
      el("td", { className: "status" }),
      el("td", { className: "service" }, button),
      ...["cpu", "ram", "disk", "silent", "interval", "count"].map((c) => el("td", { className: `num ${c}` })));
    tr.addEventListener("click", () => select(name));
    return tr;
  }

  function renderServices(services) {
    document.getElementById("services-count").textContent = `(${services.length})`;
    const names = new Set(services.map((s) => s.service));
    for (const [name, tr] of rows) {
      if (!names.has(name)) {
        tr.remove();
        rows.delete(name);
      }
    }
    servicesBody.querySelectorAll("tr.empty").forEach((tr) => tr.remove());
    if (!services.length) {
      servicesBody.append(el("tr", { className: "empty" }, el("td", { colSpan: 8, text: "no service has sent a message yet" })));
    }
    let previous = null;
    for (const s of services) {
      let tr = rows.get(s.service);
      if (!tr) {
        tr = serviceRow(s.service);
        rows.set(s.service, tr);
      }
      // Keep the API's order; move a row only when it is out of place.
      const wanted = previous ? previous.nextSibling : servicesBody.firstChild;
      if (tr !== wanted) servicesBody.insertBefore(tr, wanted);
      previous = tr;

      const status = s.status || "unknown";
      const statusCell = tr.querySelector("td.status");
      statusCell.replaceChildren(badge(status));
      statusCell.dataset.status = status;
      tr.dataset.status = status;
      statusCell.title = `stale after ${fmtDuration(s.stale_after_s)}, missing after ${fmtDuration(s.missing_after_s)}`;
      const current = s.current || {};
      tr.querySelector("td.cpu").textContent = fmtPct(current.cpu_pct);
      tr.querySelector("td.ram").textContent = fmtPct(current.ram_used_pct);
      tr.querySelector("td.disk").textContent = fmtPct(current.disk_used_pct);
      const silent = s.silent_s != null ? s.silent_s : serverNow() - s.last_seen_ts;
      tr.querySelector("td.silent").textContent = fmtDuration(silent);
      tr.querySelector("td.silent").title = `last message ${fmtDateTime(s.last_seen_ts)} UTC`;
      tr.querySelector("td.interval").textContent = fmtDuration(s.expected_interval_s);
      tr.querySelector("td.count").textContent = s.count.toLocaleString("en-US");
      tr.classList.toggle("selected", s.service === hm.state.selected);
    }
  }

  function select(name) {
    if (hm.state.selected === name) return;
    hm.state.selected = name;
    for (const [service, tr] of rows) tr.classList.toggle("selected", service === name);
    writeHash();
    refreshSeries().catch(report);
  }

  // ------------------------------------------------------------------ service charts

  const serviceFigures = Object.fromEntries(
    [...document.querySelectorAll("#service-charts figure")].map((fig) => [fig.dataset.metric, fig.querySelector(".plot")]));
  let seriesToken = 0;

  function rangeArgs() {
    const to = serverNow();
    const from = to - RANGES[hm.state.range];
    return `from=${from.toFixed(3)}&to=${to.toFixed(3)}`;
  }

  async function refreshSeries() {
    const token = ++seriesToken;
    const name = hm.state.selected;
    document.getElementById("selected-service").textContent = name || "—";
    if (!name) {
      hm.data.series = null;
      document.getElementById("step").textContent = "";
      for (const metric of METRICS) {
        if (hm.charts[metric]) hm.charts[metric].setData([[], [], [], []]);
        else if (chartsOn) serviceFigures[metric].replaceChildren(el("p", { className: "no-chart", text: "no service yet" }));
      }
      return;
    }
    const answer = await getJSON(`/api/v1/services/${encodeURIComponent(name)}/series?${rangeArgs()}`);
    if (token !== seriesToken) return; // the selection or range changed meanwhile
    hm.data.series = answer;
    const points = answer.points;
    document.getElementById("step").textContent =
      `step ${answer.step} · ${points.length} points · ${fmtDateTime(answer.from_ts)} – ${fmtDateTime(answer.to_ts)} UTC`;
    if (!chartsOn) return;
    const xs = points.map((p) => p.ts);
    for (const metric of METRICS) {
      if (!hm.charts[metric]) serviceFigures[metric].replaceChildren(); // the "no service yet" placeholder
      const chart = hm.charts[metric] || serviceChart(metric, serviceFigures[metric]);
      chart.setData([xs, ...["avg", "min", "max"].map((agg) => points.map((p) => p[metric][agg]))]);
    }
  }

  // ------------------------------------------------------------------ drives

  const drivesBox = document.getElementById("drives");
  const drivePanels = new Map(); // "host/device/op" -> panel element
  let drivesToken = 0;

  function drivePanel(key, d) {
    const panel = el("div", { className: "drive", dataset: { drive: key } },
      el("h3", {}, el("span", { text: `${d.host}/${d.device} · ${d.op}` }), el("span", { className: "drive-status" })),
      el("p", { className: "reason" }),
      el("div", { className: "plot" }));
    if (!chartsOn) panel.querySelector(".plot").append(el("p", { className: "no-chart", text: "charts library missing" }));
    return panel;
  }

  async function refreshDrives() {
    const token = ++drivesToken;
    const health = await getJSON("/api/v1/disks/health");
    if (token !== drivesToken) return;
    hm.data.diskHealth = health;
    const devices = health.devices;
    document.getElementById("drives-count").textContent = `(${devices.length})`;
    const keys = new Set(devices.map((d) => `${d.host}/${d.device}/${d.op}`));
    for (const [key, panel] of drivePanels) {
      if (!keys.has(key)) {
        panel.remove();
        drivePanels.delete(key);
        if (hm.charts[`drive:${key}`]) hm.charts[`drive:${key}`].destroy();
        delete hm.charts[`drive:${key}`];
        delete hm.data.drives[key];
      }
    }
    drivesBox.querySelectorAll(":scope > p").forEach((p) => p.remove());
    if (!devices.length) {
      drivesBox.append(el("p", { className: "muted", text: `no drive sent latency since ${fmtDateTime(Date.parse(health.recent_from) / 1000)} UTC` }));
      return;
    }
    let previous = null;
    for (const d of devices) {
      const key = `${d.host}/${d.device}/${d.op}`;
      let panel = drivePanels.get(key);
      if (!panel) {
        panel = drivePanel(key, d);
        drivePanels.set(key, panel);
      }
      const wanted = previous ? previous.nextSibling : drivesBox.firstChild;
      if (panel !== wanted) drivesBox.insertBefore(panel, wanted);
      previous = panel;
      panel.querySelector(".drive-status").replaceChildren(badge(d.status));
      panel.querySelector(".reason").textContent = d.reason;
    }
    const args = rangeArgs();
    await Promise.all(devices.map(async (d) => {
      const key = `${d.host}/${d.device}/${d.op}`;
      const url = `/api/v1/disks/${encodeURIComponent(d.host)}/${encodeURIComponent(d.device)}/latency?${args}&op=${d.op}`;
      const answer = await getJSON(url);
      if (token !== drivesToken || !drivePanels.has(key)) return;
      hm.data.drives[key] = { health: d, latency: answer };
      if (!chartsOn) return;
      const name = `drive:${key}`;
      const chart = hm.charts[name] || driveChart(name, drivePanels.get(key).querySelector(".plot"));
      const points = answer.points;
      const constant = (value) => points.map(() => (value == null ? null : value));
      chart.setData([
        points.map((p) => p.ts),
        points.map((p) => p.p50_us),
        points.map((p) => p.p95_us),
        points.map((p) => p.p99_us),
        constant(d.baseline_p99_us),
        constant(d.fleet_p99_us),
      ]);
    }));
  }

  // ------------------------------------------------------------------ alerts

  const alertsBox = document.getElementById("alerts");

  function alertsMessage(text) {
    document.getElementById("alerts-count").textContent = "";
    alertsBox.replaceChildren(el("p", { className: "muted", id: "alerts-message", text }));
  }

  async function refreshAlerts() {
    if (!alertsUrl) {
      hm.data.alerts = null;
      alertsMessage("alerts unavailable (this API has no alerts endpoint)");
      return;
    }
    let answer;
    try {
      answer = await getJSON(alertsUrl);
    } catch (err) {
      hm.data.alerts = null;
      alertsMessage(err.status === 404 ? "alerts unavailable" : `alerts unavailable: ${err.message}`);
      return;
    }
    hm.data.alerts = answer;
    const alerts = answer.alerts;
    document.getElementById("alerts-count").textContent = `(${alerts.length})`;
    if (!alerts.length) {
      alertsMessage("no active alerts");
      return;
    }
    const head = el("tr", {}, ...["state", "severity", "rule", "subject", "summary", "value", "since (UTC)"].map(
      (h) => el("th", { text: h })));
    const lines = alerts.map((a) => el("tr", { dataset: { alert: a.id } },
      el("td", {}, badge(a.state)),
      el("td", {}, badge(a.severity)),
      el("td", { text: a.rule }),
      el("td", { text: a.subject }),
      el("td", { className: "wrap", text: a.summary || "" }),
      el("td", { className: "num", text: a.value == null ? "—" : Number(a.value).toFixed(2) }),
      el("td", { text: fmtDateTime(a.fired_at_ts != null ? a.fired_at_ts : a.started_at_ts) })));
    alertsBox.replaceChildren(el("table", { id: "alerts-table" }, el("thead", {}, head), el("tbody", {}, ...lines)));
  }

  // ------------------------------------------------------------------ refresh loop

  const problem = document.getElementById("problem");

  function report(err) {
    hm.state.errors = [...hm.state.errors.slice(-19), err.message];
    problem.textContent = err.message;
    problem.hidden = false;
  }

  let running = null;

  /** One refresh of everything (concurrent calls share the one in flight). */
  function refresh() {
    if (!running) {
      running = refreshAll().finally(() => {
        running = null;
      });
    }
    return running;
  }

  async function refreshAll() {
    const errors = [];
    try {
      const answer = await getJSON("/api/v1/services");
      hm.data.services = answer;
      const names = answer.services.map((s) => s.service);
      if (!names.includes(hm.state.selected)) {
        hm.state.selected = names.length ? names[0] : null;
        writeHash();
      }
      renderServices(answer.services);
    } catch (err) {
      errors.push(err);
    }
    const parts = await Promise.allSettled([refreshSeries(), refreshDrives(), refreshAlerts()]);
    for (const part of parts) if (part.status === "rejected") errors.push(part.reason);
    if (errors.length) {
      errors.forEach(report);
    } else {
      problem.hidden = true;
    }
    hm.state.refreshes += 1;
    hm.state.lastRefresh = Date.now() / 1000;
    document.getElementById("updated").textContent = `updated ${fmtTime(serverNow())} UTC`;
  }

  function loop() {
    refresh().finally(() => setTimeout(loop, refreshS * 1000));
  }

  // ------------------------------------------------------------------ start

  readHash();
  const rangeButtons = document.querySelectorAll("#ranges button");
  function showRange() {
    rangeButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === hm.state.range)));
  }
  rangeButtons.forEach((button) => button.addEventListener("click", () => {
    hm.state.range = button.dataset.range;
    showRange();
    writeHash();
    refreshSeries().catch(report);
    refreshDrives().catch(report);
  }));
  showRange();
  if (!chartsOn) {
    for (const plot of Object.values(serviceFigures)) {
      plot.append(el("p", { className: "no-chart", text: "charts library missing" }));
    }
  }
  loop();
})();
