// weightslab ui: live fragments, charts (uPlot, served from this package) and the actions' dialogs.
"use strict";
(function () {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const TOKEN = meta("weightslab-token");
  const POLL = Math.max(250, parseInt(meta("weightslab-poll"), 10) || 2000);
  const COLOURS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4d7c0f"];

  // -- requests -------------------------------------------------------------------------------------
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
    return data;
  }
  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Weightslab-Token": TOKEN },
      body: JSON.stringify(body || {}),
    });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
    return data;
  }
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function waitForJob(job, onProgress) {
    while (job.state === "running") {
      if (onProgress) onProgress(job);
      await sleep(250);
      job = await getJSON(`/api/jobs/${job.id}`);
    }
    if (job.state === "failed") throw new Error(job.error);
    return job.result;
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }
  const fmt = (v) => (v === null || v === undefined ? "—" : typeof v === "number" ? Number(v.toPrecision(4)).toString() : String(v));
  function sizeText(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  function setStatus(node, text, kind) {
    if (!node) return;
    node.textContent = text;
    node.classList.remove("ok", "problems", "running");
    if (kind) node.classList.add(kind);
  }
  function showError(node, message) {
    node.replaceChildren(el("div", { class: "error", role: "alert" }, message));
  }

  // -- live fragments -----------------------------------------------------------------------------------
  // Bring `node` to `fresh` in place: an element whose tag matches is kept and only its attributes,
  // text and children that differ change, so a button or link the user is pressing is never replaced
  // (a click whose mousedown and mouseup land on two different elements is lost). Rows are matched by
  // their id, data-exp, data-step and data-action, so a new row at the top does not shift every row below it.
  function keyOf(n) {
    if (n.nodeType !== 1) return null;
    const parts = [n.id, n.dataset.exp, n.dataset.step, n.dataset.action];
    return parts.some(Boolean) ? parts.map((p) => p || "").join("|") : null;
  }
  function morphAttributes(target, source) {
    for (const { name } of [...target.attributes]) {
      if (!source.hasAttribute(name) && name !== "aria-busy") target.removeAttribute(name);
    }
    for (const { name, value } of [...source.attributes]) {
      if (target.getAttribute(name) !== value) target.setAttribute(name, value);
    }
  }
  function morph(target, source) {
    const wanted = [...source.childNodes];
    const keyed = new Map();
    for (const c of target.childNodes) {
      const k = keyOf(c);
      if (k !== null && !keyed.has(`${c.nodeName}:${k}`)) keyed.set(`${c.nodeName}:${k}`, c);
    }
    let cursor = target.firstChild;
    for (const want of wanted) {
      const k = keyOf(want);
      let have = k !== null ? keyed.get(`${want.nodeName}:${k}`) : cursor;
      if (k !== null) keyed.delete(`${want.nodeName}:${k}`);
      if (!have || have.nodeName !== want.nodeName || (k === null && keyOf(have) !== null)) {
        have = null;
      }
      if (!have) {
        target.insertBefore(want, cursor);
        continue;
      }
      if (have !== cursor) target.insertBefore(have, cursor);
      else cursor = cursor.nextSibling;
      if (have.nodeType === 1) {
        morphAttributes(have, want);
        morph(have, want);
      } else if (have.nodeValue !== want.nodeValue) {
        have.nodeValue = want.nodeValue;
      }
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
  }
  const shown = new WeakMap(); // node -> the fragment HTML it shows
  async function refresh(node) {
    try {
      const r = await fetch(node.dataset.live, { headers: { Accept: "text/html" } });
      const html = await r.text();
      if (html !== shown.get(node)) {
        shown.set(node, html);
        const fresh = document.createElement("template");
        fresh.innerHTML = html;
        morph(node, fresh.content);
      }
    } catch (e) {
      // the server is gone or restarting: keep what is shown, try again on the next tick
    }
  }
  const refreshAll = () => Promise.all([...document.querySelectorAll("[data-live]")].map(refresh));
  function startLive() {
    const nodes = document.querySelectorAll("[data-live]");
    if (!nodes.length) return;
    const tick = async () => {
      if (!document.hidden) await refreshAll(); // a tab in the background costs the server nothing
      setTimeout(tick, POLL);
    };
    setTimeout(tick, POLL);
  }

  // -- dialogs ------------------------------------------------------------------------------------------
  function ask(dialog) {
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }
  function confirmAction(message) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-message").textContent = message;
    return ask(dialog);
  }

  // -- actions ------------------------------------------------------------------------------------------
  const handlers = {
    async verify(button) {
      const status = document.getElementById("verify-status");
      let result;
      try {
        const job = await post("/api/verify", { exp_hash: button.dataset.exp || null });
        result = await waitForJob(job, (j) => {
          const total = j.total ? ` ${sizeText(j.done)} of ${sizeText(j.total)}` : "";
          setStatus(status, `verifying…${total}`, "running");
        });
      } catch (e) {
        setStatus(status, "", null);
        throw e;
      }
      const words = `${result.ok} of ${result.checked} checkpoint${result.checked === 1 ? "" : "s"} verify`;
      if (result.healthy) {
        setStatus(status, `OK: ${words}`, "ok");
      } else {
        setStatus(status, `${words}; ${result.problems.length} problem${result.problems.length === 1 ? "" : "s"}:`, "problems");
        const list = el("ul", { class: "problems-list" });
        for (const p of result.problems) list.append(el("li", {}, `${p.kind}: ${p.path}${p.step !== null ? ` (step ${p.step})` : ""} ${p.detail}`));
        status.append(list);
      }
      await refreshAll();
    },
    async "gc-dry-run"() { await runGc(true); },
    async gc() { await runGc(false); },
    async tag(button) {
      const dialog = document.getElementById("tag-dialog");
      const form = dialog.querySelector("form");
      form.elements.tags.value = ""; // tags are added; the ones it has stay
      form.elements.tags.placeholder = button.dataset.tags ? `has: ${button.dataset.tags}` : "";
      form.elements.description.value = button.dataset.description || "";
      document.getElementById("tag-title").textContent = `Tag checkpoint ${button.dataset.exp.slice(0, 8)} @ ${button.dataset.step}`;
      if (!(await ask(dialog))) return;
      const result = await post(`/api/exp/${button.dataset.exp}/checkpoints/${button.dataset.step}/tag`, {
        tags: form.elements.tags.value,
        description: form.elements.description.value,
      });
      setStatus(document.getElementById("action-result"), `tagged step ${result.step}: ${result.tags.join(", ") || "no tags"}`, "ok");
      await refreshAll();
    },
    async delete(button) {
      const result = await post(`/api/exp/${button.dataset.exp}/checkpoints/${button.dataset.step}/delete`);
      setStatus(document.getElementById("action-result"), `deleted checkpoint ${result.exp_hash.slice(0, 8)} @ ${result.step}`, "ok");
      await refreshAll();
    },
    async export(link) {
      const href = link.getAttribute("href");
      await getJSON(`/api/exp/${link.dataset.exp}/checkpoints/${link.dataset.step}/export`); // an unknown step or a corrupt root is a message, not a broken download
      const a = el("a", { href, download: "" });
      document.body.append(a);
      a.click();
      a.remove();
    },
    async "hub-refresh"() {
      await post("/api/hub/refresh");
      await loadHub(document.getElementById("hub"));
    },
  };
  async function runGc(dryRun) {
    const out = document.getElementById("action-result");
    const job = await post("/api/gc", { dry_run: dryRun });
    const result = await waitForJob(job, (j) => setStatus(out, `${dryRun ? "planning" : "running"} gc… ${j.phase || ""}`, "running"));
    const bytes = result.freed_bytes;
    const verb = dryRun ? "would remove" : "removed";
    setStatus(out, `gc ${dryRun ? "(dry run) " : ""}${verb} ${result.removed.length} file${result.removed.length === 1 ? "" : "s"} (${sizeText(bytes)})`, "ok");
    const list = el("ul", { class: "gc-items" });
    for (const i of result.removed) list.append(el("li", { "data-kind": i.kind }, `${i.kind} ${i.path} ${sizeText(i.bytes)} ${i.reason || ""}`));
    for (const r of result.refused || []) list.append(el("li", { class: "bad" }, `refused: ${r}`));
    out.append(list);
    if (!dryRun) await refreshAll();
  }
  document.addEventListener("click", async (event) => {
    const target = event.target.closest("[data-action]");
    if (!target || target.disabled) return;
    const handler = handlers[target.dataset.action];
    if (!handler) return;
    event.preventDefault();
    if (target.dataset.confirm && !(await confirmAction(target.dataset.confirm))) return;
    target.setAttribute("aria-busy", "true");
    try {
      await handler(target);
    } catch (e) {
      const out = document.getElementById("action-result") || document.querySelector("main");
      showError(out, e.message);
    } finally {
      target.removeAttribute("aria-busy");
    }
  });

  // -- charts -------------------------------------------------------------------------------------------
  function chartBox(container, key, title) {
    let box = container.querySelector(`.chart[data-metric="${CSS.escape(key)}"]`);
    if (!box) {
      box = el("div", { class: "chart", "data-metric": key }, el("div", { class: "chart-head" }, el("span", { class: "chart-title" }, title), el("span", { class: "best" })), el("div", { class: "plot" }));
      container.append(box);
    }
    return box;
  }
  // series: [{label, values aligned with xs}], best: {step, value} or null
  function draw(box, xs, series, yLabel, best) {
    const plot = box.querySelector(".plot");
    const data = [xs, ...series.map((s) => s.values)];
    const opts = {
      width: Math.max(320, plot.clientWidth || box.clientWidth || 600),
      height: 240,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: yLabel, size: 70 }],
      legend: { live: false },
      series: [{ label: "step" }, ...series.map((s, i) => ({ label: s.label, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true, points: { show: xs.length < 60 } }))],
    };
    if (best) {
      data.push(xs.map((x) => (x === best.step ? best.value : null)));
      opts.series.push({ label: "best", stroke: "#111827", width: 0, paths: () => null, points: { show: true, size: 12, width: 2, fill: "transparent" } });
    }
    const signature = JSON.stringify(opts.series.map((s) => s.label));
    if (box._plot && box._signature === signature) {
      box._plot.setData(data);
    } else {
      if (box._plot) box._plot.destroy();
      box._plot = new uPlot(opts, data, plot);
      box._signature = signature;
    }
  }
  function alignSeries(list) {
    const xs = [...new Set(list.flatMap((s) => s.steps))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const aligned = list.map((s) => {
      const values = xs.map(() => null);
      s.steps.forEach((step, i) => { values[index.get(step)] = s.values[i]; });
      return { label: s.name, values };
    });
    return { xs, aligned };
  }

  // after an error the charts are gone: the next answer must draw them again, even if unchanged
  function forget(section, charts) {
    delete section.dataset.last;
    for (const box of charts.querySelectorAll(".chart")) if (box._plot) box._plot.destroy();
  }

  async function loadMetrics(section) {
    const charts = section.querySelector(".charts");
    const tick = async () => {
      try {
        const data = await getJSON(section.dataset.src);
        const text = JSON.stringify(data);
        if (text !== section.dataset.last) {
          section.dataset.last = text;
          if (!data.metrics.length) charts.replaceChildren(el("p", { class: "hint" }, "No metrics were logged with the checkpoints."));
          for (const m of data.metrics) {
            const box = chartBox(charts, m.name, m.name);
            box.querySelector(".best").textContent = m.best ? `best ${fmt(m.best.value)} @ ${m.best.step} (${m.mode})` : "";
            const series = data.segments.map((s, i) => ({ label: s.label, values: m.series[i] }));
            draw(box, m.steps, series, m.name, m.best);
          }
        }
      } catch (e) {
        forget(section, charts);
        showError(charts, e.message);
      }
      setTimeout(tick, document.hidden ? POLL * 5 : POLL);
    };
    await tick();
  }

  async function loadAnalysis(section) {
    const charts = section.querySelector(".charts");
    const status = section.querySelector(".analysis-status");
    const tick = async () => {
      let wait = POLL * 5;
      try {
        const data = await getJSON(section.dataset.src);
        if (data.state === "running") {
          setStatus(status, data.total ? `analysing checkpoints: ${data.done} of ${data.total}` : "analysing the checkpoints…", "running");
          wait = 500;
        } else if (data.state === "failed") {
          showError(charts, data.error);
          setStatus(status, "", null);
        } else if (data.curves) {
          const curves = data.curves;
          const text = JSON.stringify(curves);
          if (text !== section.dataset.last) {
            section.dataset.last = text;
            for (const [key, title, list] of [["lr", "learning rate", curves.lr], ["weight_norm", "weight norm (L2)", curves.weight_norm]]) {
              if (!list || !list.length) continue;
              const { xs, aligned } = alignSeries(list);
              draw(chartBox(charts, key, title), xs, aligned, title, null);
            }
          }
          const errors = curves.errors || [];
          setStatus(status, errors.length ? `${errors.length} checkpoint${errors.length === 1 ? "" : "s"} could not be analysed: ${errors.join("; ")}` : "", errors.length ? "problems" : null);
        }
      } catch (e) {
        forget(section, charts);
        showError(charts, e.message);
      }
      setTimeout(tick, wait);
    };
    await tick();
  }

  async function loadHub(section) {
    const status = section.querySelector(".hub-status");
    const charts = section.querySelector(".charts");
    const body = section.querySelector("#branches tbody");
    for (;;) {
      let data;
      try {
        data = await getJSON(section.dataset.src);
      } catch (e) {
        showError(charts, e.message);
        return;
      }
      if (data.state === "running") {
        setStatus(status, data.total ? `analysing branches: ${data.done} of ${data.total}` : "listing the branches…", "running");
        await sleep(500);
        continue;
      }
      if (data.state === "failed") {
        setStatus(status, "", null);
        showError(charts, data.error);
        return;
      }
      const run = data.run;
      setStatus(status, `${run.branches.length} branch${run.branches.length === 1 ? "" : "es"} analysed`, "ok");
      body.replaceChildren(...run.branches.map((b) => el("tr", { "data-branch": b.branch },
        el("td", { class: "branch" }, b.branch), el("td", { class: "num step" }, fmt(b.step)), el("td", { class: "num" }, fmt(b.tokens)),
        el("td", {}, fmt(b.seed)), el("td", { class: "num lr" }, fmt(b.lr)), el("td", {}, b.has_optimizer ? "yes" : "no"),
        el("td", {}, b.has_config ? "yes" : "no"), el("td", {}, b.has_weights ? "yes" : "no"), el("td", { class: "num" }, fmt(b.parameters)),
        el("td", { class: b.errors && b.errors.length ? "bad" : "" }, (b.errors || []).join("; ")))));
      const lr = run.curves && run.curves.lr;
      if (lr && lr.length) {
        const { xs, aligned } = alignSeries(lr);
        draw(chartBox(charts, "lr", "learning rate"), xs, aligned, "learning rate", null);
      }
      return;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    startLive();
    const metrics = document.getElementById("metrics");
    if (metrics) loadMetrics(metrics);
    const analysis = document.getElementById("analysis");
    if (analysis) loadAnalysis(analysis);
    const hub = document.getElementById("hub");
    if (hub) loadHub(hub);
  });
})();
