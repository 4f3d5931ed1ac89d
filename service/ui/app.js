// The /ui viewer: builds a request from the form, posts it to the JSON API, and shows the result
// (rendering: render.js). The API key lives in sessionStorage: this tab only.
"use strict";
(function () {
  const R = window.MLLMRender;
  const $ = (id) => document.getElementById(id);
  const state = { info: null, image: null, dataUrl: null, fileName: null, response: null, heat: new Map(), selected: null };

  function headers() {
    const key = $("api-key").value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function showError(message, requestId) {
    const box = $("error");
    box.textContent = message + (requestId ? `\nrequest id: ${requestId}` : "");
    box.hidden = false;
  }

  async function errorOf(response) {
    let detail = `HTTP ${response.status}`;
    let requestId = response.headers.get("X-Request-ID");
    try {
      const body = await response.json();
      if (body.detail) detail = `${detail}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
      requestId = body.request_id || requestId;
    } catch (e) { /* not JSON: the status says it */ }
    return { detail, requestId };
  }

  async function loadInfo() {
    try {
      const response = await fetch("/info", { headers: headers() });
      if (!response.ok) {
        const { detail, requestId } = await errorOf(response);
        $("service-line").textContent = "Service information unavailable: " + detail + (response.status === 401 ? " (type the API key below)" : "");
        if (requestId) $("service-line").textContent += ` (request id ${requestId})`;
        return;
      }
      state.info = await response.json();
      const { model, limits, methods } = state.info;
      $("service-line").textContent = `Model ${model.id} (${model.family}); images up to ${limits.max_payload_bytes} bytes of request`;
      const select = $("method");
      select.textContent = "";
      methods.forEach((m) => { const o = document.createElement("option"); o.value = o.textContent = m; select.appendChild(o); });
      $("regions").max = limits.regions.max;
    } catch (e) {
      $("service-line").textContent = "The service could not be reached: " + e.message;
    }
  }

  function setFile(file) {
    $("error").hidden = true;
    if (!file) return;
    const limit = state.info ? state.info.limits.max_payload_bytes : null;
    // base64 grows the bytes by 4/3, plus the prompt and answer: refused here, before any upload
    if (limit && Math.ceil(file.size / 3) * 4 + 4096 > limit) {
      state.dataUrl = null;
      showError(`The image is ${file.size} bytes: as base64 in a request it passes the service's limit of ${limit} bytes (max_payload_bytes in /info). Choose a smaller image.`);
      return;
    }
    const reader = new FileReader();
    reader.onload = async () => {
      state.dataUrl = reader.result;
      state.fileName = file.name;
      try {
        state.image = await R.loadImage(state.dataUrl);
        $("image-preview").src = state.dataUrl;
        $("image-preview").hidden = false;
      } catch (e) { showError(e.message); }
    };
    reader.readAsDataURL(file);
  }

  function requestBody() {
    const body = { image: state.dataUrl, prompt: $("prompt").value, answer: $("answer").value };
    if ($("verify").checked) body.verify = true;
    if ($("endpoint").value === "reliance") return body;
    body.method = $("method").value;
    body.targets = $("targets").value;
    body.regions = Number($("regions").value);
    const budget = $("budget").value;
    if (budget) body.max_forward_passes = Number(budget);
    body.heatmap = { encoding: "png" };
    if ($("heatmap-kind").value) body.heatmap.kind = $("heatmap-kind").value;
    return body;
  }

  function snippets(path, body) {
    const shown = { ...body, image: body.image.slice(0, 40) + "…" };
    $("request-json").value = JSON.stringify(shown, null, 2);
    const file = state.fileName || "image.png";
    const fields = JSON.stringify({ ...body, image: undefined });
    $("curl-snippet").value = `python3 - <<'EOF' | curl -s ${location.origin}${path} -H 'Content-Type: application/json'${$("api-key").value ? " -H \"Authorization: Bearer $MLLM_AUDIT_API_KEY\"" : ""} -d @-
import base64, json
body = json.loads('''${fields}''')
body["image"] = base64.b64encode(open("${file}", "rb").read()).decode()
print(json.dumps(body))
EOF`;
    const kw = Object.entries(body).filter(([k]) => !["image", "prompt", "answer"].includes(k))
      .map(([k, v]) => `, ${k}=${JSON.stringify(v).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None")}`).join("");
    $("python-snippet").value = `from mllm_audit import AuditClient

with AuditClient("${location.origin}", api_key=${$("api-key").value ? "\"...\"" : "None"}) as client:
    result = client.${path.endsWith("explain") ? "explain" : "reliance"}(
        image="${file}", prompt=${JSON.stringify(body.prompt)}, answer=${JSON.stringify(body.answer)}${kw}
    )`;
  }

  async function submit(event) {
    event.preventDefault();
    $("error").hidden = true;
    if (!state.dataUrl) { showError("Choose an image first."); return; }
    const path = "/v1/" + $("endpoint").value;
    const body = requestBody();
    snippets(path, body);
    $("submit").disabled = true;
    const bar = $("progress");
    bar.removeAttribute("value");  // indeterminate until the service reports a budget
    bar.hidden = false;
    const started = performance.now();
    const seconds = () => ((performance.now() - started) / 1000).toFixed(0);
    let done = "";  // "N of M forward passes" once a progress event has come
    const tick = () => { $("progress-text").textContent = `working… ${done ? done + ", " : ""}${seconds()} s`; };
    const timer = setInterval(tick, 500);
    const streamed = path.endsWith("explain");  // /v1/explain streams its progress; /v1/reliance is one pass or two
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...headers() },
        body: JSON.stringify(streamed ? { ...body, stream: true } : body),
      });
      if (!response.ok) {
        const { detail, requestId } = await errorOf(response);
        showError(detail, requestId);
        return;
      }
      state.response = streamed ? await readEvents(response, (p) => {
        if (p.budget) {
          bar.max = p.budget;
          bar.value = Math.min(p.forward_passes, p.budget);
          done = `${p.forward_passes} of ${p.budget} forward passes`;
          tick();
        }
      }) : await response.json();
      await show(state.response);
      $("progress-text").textContent = `done in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    } catch (e) {
      if (e.status) showError(`HTTP ${e.status}: ${e.message}`, e.requestId);
      else showError("The request failed: " + e.message);
      $("progress-text").textContent = "";
    } finally {
      clearInterval(timer);
      $("submit").disabled = false;
      bar.hidden = true;
    }
  }

  // A `stream: true` answer (text/event-stream): progress events go to onProgress; the result event's
  // JSON is returned; an error event is thrown with its status and request id.
  async function readEvents(response, onProgress) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const block = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const name = (block.match(/^event: (.*)$/m) || [])[1];
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (name === "progress") onProgress(JSON.parse(data));
        else if (name === "result") { reader.cancel(); return JSON.parse(data); }
        else if (name === "error") {
          const error = JSON.parse(data);
          reader.cancel();
          throw Object.assign(new Error(error.detail), { status: error.status, requestId: error.request_id });
        }
      }
      if (done) throw new Error("the connection closed before the result");
    }
  }

  async function show(result) {
    state.heat.clear();
    state.selected = null;
    $("result").hidden = false;
    const s = result.summary;
    $("summary").textContent = `Answer risk ${R.RISK_TEXT[s.risk_label]} (${s.risk_score.toFixed(3)}); ${s.claims} claims, ${s.flagged_claims} flagged; visual reliance ${s.visual_reliance.toFixed(3)}; ${result.stats.forward_passes} forward passes; request id ${result.request_id}`;
    $("risk-legend").innerHTML = Object.entries(R.RISK_TEXT).map(([k, v]) => `<span class="risk-${k}">${v}</span>`).join("") +
      "<span>reliance: dark (0) to light (1), the heat scale</span>";
    R.tokenSpans($("tokens-risk"), result.tokens, "risk", select);
    R.tokenSpans($("tokens-reliance"), result.tokens, "reliance", select);
    const list = $("claims");
    list.textContent = "";
    result.claims.forEach((c) => {
      const li = document.createElement("li");
      li.className = "claim risk-" + c.risk_label;
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      li.dataset.claim = c.index;
      li.textContent = `${c.text} (${c.kind}): risk ${R.RISK_TEXT[c.risk_label]} ${c.risk_score.toFixed(3)}`;
      li.addEventListener("click", () => selectClaim(c));
      li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectClaim(c); } });
      list.appendChild(li);
    });
    const canvas = $("overlay");
    const scale = Math.max(1, Math.floor(384 / Math.max(state.image.naturalWidth, state.image.naturalHeight)));
    canvas.width = state.image.naturalWidth * scale;
    canvas.height = state.image.naturalHeight * scale;
    $("colour-bar").height = canvas.height;
    R.drawColourBar($("colour-bar"));
    const atts = result.attributions || [];
    if (atts.length) await showAttributions(atts.map((a, i) => i));
    else {
      R.drawOverlay(canvas, state.image, null, result.claims.filter((c) => c.evidence_bbox).map((c) => c.evidence_bbox));
      $("heatmap-note").textContent = "No attribution maps on the reliance path; boxes: the claims' evidence patches.";
      $("target-title").textContent = "Image";
    }
  }

  async function heatOf(i) {
    if (!state.heat.has(i)) state.heat.set(i, await R.decodeHeatmap(state.response.attributions[i].heatmap));
    return state.heat.get(i);
  }

  // the attributions `indices` shown together: one map as it is, several as their mean (said so)
  async function showAttributions(indices, label) {
    const atts = indices.map((i) => state.response.attributions[i]);
    const maps = (await Promise.all(indices.map(heatOf))).filter(Boolean);
    let heat = maps[0] || null;
    if (maps.length > 1) {
      const values = new Float32Array(heat.values.length);
      maps.forEach((m) => m.values.forEach((v, j) => { values[j] += v / maps.length; }));
      heat = { ...heat, values };
    }
    const first = atts[0];
    state.regions = atts.length === 1 ? first.regions : [];
    $("target-title").textContent = label || `Attribution of “${first.target.text}”`;
    const kind = first.heatmap ? first.heatmap.kind : "none";
    const flat = atts.find((a) => a.heatmap && a.heatmap.flat);
    $("heatmap-note").textContent = (maps.length > 1 ? `mean of ${maps.length} token maps; ` : "") +
      (flat ? `FLAT MAP: ${flat.heatmap.flat_reason}` : `values: ${kind}`) +
      (first.insertion_auc != null ? `; insertion AUC ${first.insertion_auc.toFixed(3)}, deletion AUC ${first.deletion_auc.toFixed(3)}` : "");
    $("overlay").dataset.target = first.target.text;
    $("overlay").dataset.kind = kind;
    const boxes = state.regions.slice(0, 3).map((r) => r.bbox);
    R.drawOverlay($("overlay"), state.image, heat, boxes);
    const reveal = $("reveal");
    reveal.max = state.regions.length;
    reveal.value = state.regions.length;
    reveal.disabled = state.regions.length === 0;
    $("reveal-count").textContent = state.regions.length ? `all ${state.regions.length} regions` : "no regions (white-box map)";
    state.current = { heat, boxes };
    $("curves").innerHTML = R.curvesSvg(first.insertion_curve, first.deletion_curve);
  }

  function markSelected(tokenIndices, claimIndex) {
    document.querySelectorAll(".token").forEach((el) => el.classList.toggle("selected", tokenIndices.includes(Number(el.dataset.index))));
    document.querySelectorAll(".claim").forEach((el) => el.classList.toggle("selected", Number(el.dataset.claim) === claimIndex));
  }

  function attributionsOf(tokenIndices) {
    const atts = state.response.attributions || [];
    return atts.map((a, i) => [a, i]).filter(([a]) => a.target.token_indices.some((t) => tokenIndices.includes(t))).map(([, i]) => i);
  }

  async function select(index, hover) {
    if (hover && state.selected !== null) return; // hovering previews until something is clicked
    if (!hover) state.selected = index;
    markSelected([index], null);
    const found = attributionsOf([index]);
    if (found.length) await showAttributions([found[0]]);
  }

  async function selectClaim(claim) {
    state.selected = -1;
    markSelected(claim.token_indices, claim.index);
    const found = attributionsOf(claim.token_indices);
    if (found.length) await showAttributions(found, `Attribution of the claim “${claim.text}”`);
    if (claim.evidence_bbox) {
      R.drawOverlay($("overlay"), state.image, state.current ? state.current.heat : null, [claim.evidence_bbox]);
    }
  }

  function reveal() {
    const k = Number($("reveal").value);
    if (!state.regions || !state.regions.length) return;
    $("reveal-count").textContent = k === state.regions.length ? `all ${k} regions` : `top ${k} of ${state.regions.length} regions`;
    if (k === state.regions.length) R.drawOverlay($("overlay"), state.image, state.current.heat, state.current.boxes);
    else R.drawReveal($("overlay"), state.image, state.regions, k);
  }

  function init() {
    $("api-key").value = sessionStorage.getItem("mllm-audit-key") || "";
    $("api-key").addEventListener("change", () => { sessionStorage.setItem("mllm-audit-key", $("api-key").value); loadInfo(); });
    $("image-file").addEventListener("change", (e) => setFile(e.target.files[0]));
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("dragging"); setFile(e.dataTransfer.files[0]); });
    zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("image-file").click(); } });
    $("audit-form").addEventListener("submit", submit);
    $("reveal").addEventListener("input", reveal);
    $("copy-json").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(JSON.stringify(requestBody())));
    loadInfo();
  }

  init();
})();
