// report.html's script: interactive plots (plotly.js), the attention viewer and the decoding scrubber.
// Everything it shows comes from the JSON in #report-data, written by mdlm_interp/analyses/html_report.py.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
    "#7ad151", "#bddf26", "#fde725"].map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));

  function viridis(t) {  // t in [0, 1] -> [r, g, b]
    const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  }

  function shade(element, t) {  // viridis background, readable text colour
    const [r, g, b] = viridis(t);
    element.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
    element.style.color = 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
  }

  function option(select, value, text) {
    const o = document.createElement("option");
    o.value = String(value);
    o.textContent = text;
    select.appendChild(o);
  }

  function shown(text) {  // a token as visible text (newlines and tabs spelled out)
    return text.replace(/\n/g, "\\n").replace(/\t/g, "\\t");
  }

  // ---- plots ----
  for (const plot of DATA.plots) {
    const holder = document.getElementById(`plots-${plot.section}`);
    if (!holder) continue;
    const figure = document.createElement("figure");
    const div = document.createElement("div");
    div.id = plot.id;
    div.className = "plot" + (plot.kind ? ` ${plot.kind}` : "");
    div.setAttribute("role", "img");
    div.setAttribute("aria-label", plot.title);
    const caption = document.createElement("figcaption");
    caption.textContent = plot.caption;
    figure.append(div, caption);
    holder.appendChild(figure);
    Plotly.newPlot(div, plot.data, plot.layout, {displaylogo: false, responsive: true});
  }

  // ---- attention viewer ----
  function decodeWeights(text) {  // base64 of little-endian uint16 -> Float32Array in [0, 1]
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const out = new Float32Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true) / 65535;
    return out;
  }

  function condition(row) {
    return `${row.masks} mask${row.masks === 1 ? "" : "s"}${row.filler ? " (filler)" : ""}, ${row.placement}`;
  }

  const attention = DATA.attention;
  if (attention && attention.stores.length) {
    const section = document.getElementById("attention-viewer");
    section.hidden = false;
    const [storeSelect, exampleSelect, conditionSelect, layerSelect, headSelect] =
      ["attn-store", "attn-example", "attn-condition", "attn-layer", "attn-head"].map((id) => document.getElementById(id));
    const tokensBox = document.getElementById("attn-tokens");
    const decoded = new Map();
    attention.stores.forEach((s, i) => option(storeSelect, i, s.label));

    const store = () => attention.stores[Number(storeSelect.value)];
    const row = () => store().rows[Number(conditionSelect.value)];

    function fillStore() {
      const s = store();
      exampleSelect.replaceChildren();
      const seen = new Set();
      for (const r of s.rows) {
        if (seen.has(r.example)) continue;
        seen.add(r.example);
        option(exampleSelect, r.example, `example ${r.example} (${r.task})`);
      }
      layerSelect.replaceChildren();
      headSelect.replaceChildren();
      for (let l = 0; l < s.layers; l++) option(layerSelect, l, `layer ${l}`);
      for (let h = 0; h < s.heads; h++) option(headSelect, h, `head ${h}`);
      fillExample();
    }

    function fillExample() {
      const s = store(), example = Number(exampleSelect.value);
      const previous = conditionSelect.value === "" ? null : s.rows[Number(conditionSelect.value)];
      conditionSelect.replaceChildren();
      s.rows.forEach((r, i) => { if (r.example === example) option(conditionSelect, i, condition(r)); });
      if (previous) {  // keep the condition when another example has it
        const same = s.rows.findIndex((r) => r.example === example && r.masks === previous.masks &&
          r.filler === previous.filler && r.placement === previous.placement);
        if (same >= 0) conditionSelect.value = String(same);
      }
      draw();
    }

    function draw() {
      const s = store(), r = row();
      const key = `${storeSelect.value}:${conditionSelect.value}`;
      if (!decoded.has(key)) decoded.set(key, decodeWeights(r.weights));
      const weights = decoded.get(key);
      const layer = Number(layerSelect.value), head = Number(headSelect.value), n = r.ids.length;
      const offset = (layer * s.heads + head) * n;
      let most = 0, argmost = 0;
      for (let t = 0; t < n; t++) if (weights[offset + t] > most) { most = weights[offset + t]; argmost = t; }
      tokensBox.replaceChildren();
      for (let t = 0; t < n; t++) {
        const span = document.createElement("span");
        const w = weights[offset + t], kind = r.kinds[t];
        span.className = "tok" + (kind ? ` ${kind}` : "") + (t === r.readout ? " readout" : "");
        span.textContent = shown(s.tokens[String(r.ids[t])]);
        span.dataset.position = String(t);
        span.dataset.weight = String(w);
        span.title = `position ${t}${kind ? ` (${kind === "answer" ? "answer slot" : kind})` : ""}: weight ${w.toFixed(4)}`;
        shade(span, most > 0 ? w / most : 0);
        tokensBox.appendChild(span);
      }
      tokensBox.dataset.layer = String(layer);
      tokensBox.dataset.head = String(head);
      document.getElementById("attn-max").textContent = most.toFixed(4);
      document.getElementById("attn-status").textContent =
        `Layer ${layer}, head ${head}, ${condition(r)}: the readout position attends most to position ${argmost} ` +
        `(${shown(s.tokens[String(r.ids[argmost])])}, weight ${most.toFixed(3)}).`;
    }

    storeSelect.addEventListener("change", fillStore);
    exampleSelect.addEventListener("change", fillExample);
    for (const select of [conditionSelect, layerSelect, headSelect]) select.addEventListener("change", draw);
    fillStore();
  }

  // ---- decoding scrubber ----
  if (DATA.traces.length) {
    document.getElementById("decode-scrubber").hidden = false;
    const select = document.getElementById("trace-select"), slider = document.getElementById("trace-step");
    const box = document.getElementById("trace-tokens"), label = document.getElementById("trace-step-label");
    DATA.traces.forEach((t, i) => option(select, i, t.label));

    function drawRecorded(trace, k) {  // a record --decode row: the answer slot and the count of masks left
      const steps = trace.proposed.length, still = k <= trace.unmask_step && k < steps;
      const span = document.createElement("span");
      span.className = "tok answer" + (still ? " masked" : "") + (k === trace.unmask_step ? " new" : "");
      span.dataset.position = "answer slot";
      span.dataset.masked = still ? "true" : "false";
      if (still) {
        const proposal = trace.tokens[String(trace.proposed[k])], p = trace.p_answer[k];
        span.dataset.proposed = proposal;
        span.textContent = "▒ ";
        const small = document.createElement("small");
        small.textContent = shown(proposal);
        span.appendChild(small);
        span.title = `answer slot: masked; proposes ${shown(proposal)}, p(answer) ` + (p === null ? "-" : p.toFixed(3));
        if (p !== null) shade(span, p);
      } else {
        span.textContent = shown(trace.tokens[String(trace.decoded)]);
        span.title = `answer slot: decoded at step ${trace.unmask_step} with confidence ${trace.confidence.toFixed(3)}`;
      }
      box.replaceChildren(span);
      const left = k < steps ? trace.masks_left[k] : 0;
      label.textContent = `step ${k} of ${steps}`;
      slider.setAttribute("aria-valuetext", `step ${k} of ${steps}, ${left} masks left`);
      document.getElementById("trace-status").textContent = `Before step ${k}: ${left} of the ${trace.masks} ` +
        `tokens from the answer slot on are still masks (a record store keeps the answer slot's proposal and ` +
        `p(answer), shaded, not the other positions').`;
    }

    function drawStep() {
      const trace = DATA.traces[Number(select.value)], k = Number(slider.value);
      if (trace.kind === "record") return drawRecorded(trace, k);
      const steps = trace.proposed.length, canvas = trace.ids[k];
      box.replaceChildren();
      let masked = 0;
      canvas.forEach((id, p) => {
        const span = document.createElement("span");
        const still = trace.unmask_step[p] >= k;  // unmasked at step unmask_step[p]: masked before it
        span.className = "tok" + (still ? " masked" : "") + (k < steps && trace.unmask_step[p] === k ? " new" : "");
        span.dataset.position = String(p);
        span.dataset.masked = still ? "true" : "false";
        if (still && k < steps) {
          const proposal = trace.tokens[String(trace.proposed[k][p])], confidence = trace.confidence[k][p];
          span.dataset.proposed = proposal;
          span.dataset.confidence = confidence === null ? "" : String(confidence);
          span.textContent = "▒ ";
          const small = document.createElement("small");
          small.textContent = shown(proposal);
          span.appendChild(small);
          span.title = `position ${p}: masked; proposes ${shown(proposal)} with confidence ` +
            (confidence === null ? "(not scored)" : confidence.toFixed(3));
          if (confidence !== null) shade(span, confidence);
          masked += 1;
        } else {
          span.textContent = shown(trace.tokens[String(id)]);
          span.title = `position ${p}` + (still ? ": masked" : "");
          if (still) masked += 1;
        }
        box.appendChild(span);
      });
      label.textContent = `step ${k} of ${steps}`;
      slider.setAttribute("aria-valuetext", `step ${k} of ${steps}, ${masked} positions masked`);
      document.getElementById("trace-status").textContent = `Before step ${k}: ${masked} of ${canvas.length} ` +
        "generated positions are still masked.";
    }

    function fillTrace() {
      slider.max = String(DATA.traces[Number(select.value)].proposed.length);
      slider.value = "0";
      drawStep();
    }

    select.addEventListener("change", fillTrace);
    slider.addEventListener("input", drawStep);
    fillTrace();
  }
})();
