// Drawing an audit for people: heat over the image, region boxes, the reveal by rank, curves,
// the answer coloured by risk and by visual reliance. Shared by the /ui viewer and the HTML
// report (`mllm-audit audit --html` inlines this file). Needs window.MLLM_COLORMAP (colormap.js).
"use strict";
(function (global) {
  const RISK_TEXT = { low: "low", medium: "medium", high: "HIGH", not_visual: "not visual" };

  function colour(value) {
    const table = global.MLLM_COLORMAP;
    const v = Math.min(1, Math.max(0, Number(value) || 0));
    const hex = table[Math.round(v * (table.length - 1))];
    return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)];
  }

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the image could not be decoded by the browser"));
      img.src = src;
    });
  }

  // {width, height, values: Float32Array in [0, 1]} from the response's heatmap (png or array)
  async function decodeHeatmap(heatmap) {
    if (!heatmap) return null;
    const { width, height } = heatmap;
    const values = new Float32Array(width * height);
    if (heatmap.encoding === "array") {
      heatmap.data.forEach((row, y) => row.forEach((v, x) => { values[y * width + x] = v; }));
    } else {
      const img = await loadImage("data:image/png;base64," + heatmap.data);
      const c = document.createElement("canvas");
      c.width = width; c.height = height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, width, height).data;
      for (let i = 0; i < width * height; i++) values[i] = px[4 * i] / 255;
    }
    return { width, height, values };
  }

  // the heat map as an RGBA canvas of its own size
  function heatCanvas(heat, alpha) {
    const c = document.createElement("canvas");
    c.width = heat.width; c.height = heat.height;
    const ctx = c.getContext("2d");
    const out = ctx.createImageData(heat.width, heat.height);
    for (let i = 0; i < heat.values.length; i++) {
      const [r, g, b] = colour(heat.values[i]);
      out.data.set([r, g, b, Math.round(alpha * 255)], 4 * i);
    }
    ctx.putImageData(out, 0, 0);
    return c;
  }

  // run-length mask (row-major runs, 0s first) to a Uint8Array of height*width
  function decodeMask(mask) {
    const [h, w] = mask.size;
    const out = new Uint8Array(h * w);
    let pos = 0, bit = 0;
    for (const n of mask.counts) {
      if (bit) out.fill(1, pos, pos + n);
      pos += n; bit ^= 1;
    }
    return out;
  }

  // image, heat (or null), boxes [[x0, y0, x1, y1], ...] drawn onto `canvas` at its size
  function drawOverlay(canvas, img, heat, boxes, alpha = 0.6) {
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    if (heat) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heatCanvas(heat, alpha), 0, 0, canvas.width, canvas.height);
    }
    const sx = canvas.width / img.naturalWidth, sy = canvas.height / img.naturalHeight;
    ctx.lineWidth = 2;
    (boxes || []).forEach(([x0, y0, x1, y1], n) => {
      ctx.strokeStyle = n === 0 ? "#ff40a0" : "#ffffff";
      ctx.setLineDash(n === 0 ? [] : [4, 3]);
      ctx.strokeRect(x0 * sx + 1, y0 * sy + 1, (x1 - x0) * sx - 2, (y1 - y0) * sy - 2);
    });
    ctx.setLineDash([]);
  }

  // only the top `k` regions of the ranking shown, the rest black (k = regions.length: everything)
  function drawReveal(canvas, img, regions, k) {
    const [h, w] = regions[0].mask.size;
    const keep = new Uint8Array(h * w);
    regions.slice(0, k).forEach((r) => decodeMask(r.mask).forEach((v, i) => { if (v) keep[i] = 1; }));
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0, w, h);
    const px = ctx.getImageData(0, 0, w, h);
    for (let i = 0; i < keep.length; i++) if (!keep[i]) px.data.set([0, 0, 0], 4 * i);
    ctx.putImageData(px, 0, 0);
    const out = canvas.getContext("2d");
    out.imageSmoothingEnabled = false;
    out.drawImage(c, 0, 0, canvas.width, canvas.height);
  }

  function drawColourBar(canvas) {
    const ctx = canvas.getContext("2d");
    const barW = 18, top = 8, h = canvas.height - 16;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (let y = 0; y < h; y++) {
      const [r, g, b] = colour(1 - y / (h - 1));
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(0, top + y, barW, 1);
    }
    ctx.strokeStyle = "#000"; ctx.strokeRect(0.5, top + 0.5, barW, h);
    ctx.fillStyle = "#000"; ctx.font = "12px sans-serif"; ctx.textBaseline = "middle";
    [1, 0.5, 0].forEach((v) => ctx.fillText(v.toFixed(1), barW + 4, top + (1 - v) * (h - 1)));
  }

  // the answer as spans, one per token, coloured by risk label ("risk") or visual reliance ("reliance")
  function tokenSpans(container, tokens, mode, onSelect) {
    container.textContent = "";
    tokens.forEach((t) => {
      const span = document.createElement("span");
      span.textContent = t.text;
      span.className = "token";
      span.tabIndex = 0;
      span.dataset.index = t.index;
      span.setAttribute("role", "button");
      if (mode === "risk") {
        span.classList.add("risk-" + t.risk_label);
        span.title = `risk ${RISK_TEXT[t.risk_label]} (${t.risk_score.toFixed(3)})`;
      } else {
        const [r, g, b] = colour(t.visual_reliance);
        span.style.background = `rgb(${r},${g},${b})`;
        span.style.color = t.visual_reliance > 0.55 ? "#000" : "#fff";
        span.title = `visual reliance ${t.visual_reliance.toFixed(3)}`;
      }
      span.setAttribute("aria-label", `${t.text}: ${span.title}`);
      if (onSelect) {
        span.addEventListener("click", () => onSelect(t.index));
        span.addEventListener("mouseenter", () => onSelect(t.index, true));
        span.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSelect(t.index); } });
      }
      container.appendChild(span);
    });
  }

  // insertion and deletion curves as an SVG string: [[share of the image, probability], ...]
  function curvesSvg(insertion, deletion, width = 320, height = 200) {
    const pad = 32, w = width - 2 * pad, h = height - 2 * pad;
    const path = (pts) => pts.map(([x, y], i) => `${i ? "L" : "M"}${(pad + x * w).toFixed(1)},${(pad + (1 - y) * h).toFixed(1)}`).join(" ");
    const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
    return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" role="img" aria-label="${esc("insertion (solid) and deletion (dashed) curves")}">
<rect x="${pad}" y="${pad}" width="${w}" height="${h}" fill="none" stroke="#999"/>
<path d="${path(insertion || [])}" fill="none" stroke="#1f3b8f" stroke-width="2"/>
<path d="${path(deletion || [])}" fill="none" stroke="#b8860b" stroke-width="2" stroke-dasharray="5 3"/>
<text x="${pad}" y="${pad - 8}" font-size="11">p(target): insertion — solid, deletion - - dashed</text>
<text x="${pad}" y="${height - 8}" font-size="11">0</text><text x="${pad + w - 30}" y="${height - 8}" font-size="11">share 1</text>
<text x="4" y="${pad + 4}" font-size="11">1</text><text x="4" y="${pad + h}" font-size="11">0</text></svg>`;
  }

  global.MLLMRender = { colour, loadImage, decodeHeatmap, decodeMask, drawOverlay, drawReveal, drawColourBar, tokenSpans, curvesSvg, RISK_TEXT };
})(window);
