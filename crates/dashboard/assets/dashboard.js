// Ferry dashboard: charts (uPlot), live updates over server-sent events,
// and a notice when a new failure arrives. The server renders every number;
// this script only redraws the page with the server's newest rendering.
"use strict";

const COLORS = ["#1a73e8", "#e8710a", "#188038", "#9334e6"];
let charts = [];

function drawCharts() {
  charts.forEach((c) => c.destroy());
  charts = [];
  const data = document.getElementById("series-data");
  if (!data || typeof uPlot === "undefined") return;
  const s = JSON.parse(data.textContent);
  const width = (el) => Math.max(300, el.clientWidth || 600);
  const rate = document.getElementById("chart-rate");
  if (rate) {
    charts.push(new uPlot({
      width: width(rate), height: 220,
      scales: { y: { range: [0, 100] } },
      axes: [{}, { label: "% failed", values: (u, v) => v.map((x) => x + " %") }],
      series: [{}].concat(s.versions.map((v, i) => ({
        label: v.to_version, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
        points: { show: true, size: 6, fill: COLORS[i % COLORS.length] },
        value: (u, x) => (x == null ? "—" : x.toFixed(1) + " %"),
      }))),
    }, [s.hours].concat(s.versions.map((v) => v.failure_rate.map((x) => (x == null ? null : x * 100)))), rate));
  }
  const reports = document.getElementById("chart-reports");
  if (reports) {
    charts.push(new uPlot({
      width: width(reports), height: 220,
      axes: [{}, { label: "reports" }],
      series: [{},
        { label: "success", stroke: "#188038", width: 2 },
        { label: "failure", stroke: "#b3261e", width: 2 },
        { label: "rolled back", stroke: "#e8710a", width: 2 }],
    }, [s.hours, s.success, s.failure, s.rolled_back], reports));
  }
}

// The page's newest rendering, swapped in without a reload.
let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    try {
      const res = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (res.redirected && new URL(res.url).pathname === "/signin") { location.assign("/signin"); return; }
      if (!res.ok) return;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.getElementById("main");
      if (fresh) {
        document.getElementById("main").replaceChildren(...fresh.childNodes);
        drawCharts();
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
      }
    } catch (e) { /* the next event tries again */ }
  }, 500);
}

function toast(event) {
  const box = document.getElementById("toasts");
  const t = document.createElement("div");
  t.className = "toast";
  const n = event.failures;
  const link = document.createElement("a");
  link.href = "/tenants/" + encodeURIComponent(event.tenant) + "/apps/" + encodeURIComponent(event.app);
  link.textContent = event.tenant + " / " + event.app;
  t.append(n + (n === 1 ? " new failed upgrade in " : " new failed upgrades in "), link);
  t.addEventListener("click", (e) => { if (e.target !== link) t.remove(); });
  box.prepend(t);
  setTimeout(() => t.remove(), 60000);
}

function thisPageShows(event) {
  const h1 = document.querySelector("h1[data-app]");
  return !h1 || h1.dataset.app === event.tenant + "/" + event.app;
}

function connect() {
  if (!document.getElementById("live")) return;
  const source = new EventSource("/events");
  const live = document.getElementById("live");
  source.onopen = () => live.classList.add("on");
  source.onerror = () => live.classList.remove("on");
  const onEvent = (e) => {
    const event = JSON.parse(e.data);
    if (event.failures > 0) toast(event);
    if (thisPageShows(event)) refreshSoon();
  };
  source.addEventListener("reports", onEvent);
  source.addEventListener("deployed", onEvent);
  source.addEventListener("resync", refreshSoon);
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  connect();
});
