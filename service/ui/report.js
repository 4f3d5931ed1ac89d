// The HTML report's script (`mllm-audit audit --html`, `mllm-audit report`): sorts the cases table
// by a clicked header, and draws each case with render.js, as the /ui viewer does. Reads its data
// from the page's own <script type="application/json">: nothing is fetched.
"use strict";
(function () {
  const R = window.MLLMRender;
  const cases = JSON.parse(document.getElementById("report-cases").textContent);

  function sortBy(th) {
    const table = th.closest("table");
    const column = Array.from(th.parentNode.children).indexOf(th);
    const numeric = th.dataset.type === "number";
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach((h) => h.setAttribute("aria-sort", "none"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const body = table.tBodies[0];
    const key = (row) => row.cells[column].dataset.sort;
    const compare = numeric ? (a, b) => Number(key(a)) - Number(key(b)) : (a, b) => key(a).localeCompare(key(b), undefined, { numeric: true });
    const rows = Array.from(body.rows).sort((a, b) => (ascending ? compare(a, b) : compare(b, a)));
    rows.forEach((row) => body.appendChild(row)); // a stable sort: ties keep their order
  }

  async function drawCase(c, n) {
    const section = document.createElement("section");
    section.className = "case";
    section.id = "case-" + n;
    const title = document.createElement("h3");
    title.textContent = `${c.id}: risk ${R.RISK_TEXT[c.summary.risk_label]} (${c.summary.risk_score.toFixed(3)})`;
    const prompt = document.createElement("p");
    prompt.textContent = "Prompt: " + c.prompt;
    const answer = document.createElement("p");
    answer.className = "answer-line";
    R.tokenSpans(answer, c.tokens, "risk");
    const claims = document.createElement("ul");
    c.claims.forEach((claim) => {
      const li = document.createElement("li");
      li.className = "claim risk-" + claim.risk_label;
      li.textContent = `${claim.text} (${claim.kind}): risk ${R.RISK_TEXT[claim.risk_label]} ${claim.risk_score.toFixed(3)}`;
      claims.appendChild(li);
    });
    section.append(title);
    if (c.prompt) section.appendChild(prompt);
    document.getElementById("case-list").appendChild(section);
    if (c.image) {
      const canvas = document.createElement("canvas");
      canvas.className = "overlay";
      canvas.setAttribute("aria-label", "the image with its overlays");
      section.appendChild(canvas);
      try {
        const img = await R.loadImage(c.image);
        const scale = Math.max(1, Math.floor(256 / Math.max(img.naturalWidth, img.naturalHeight)));
        canvas.width = img.naturalWidth * scale;
        canvas.height = img.naturalHeight * scale;
        const heat = await R.decodeHeatmap(c.heatmap);
        const boxes = c.claims.filter((x) => x.evidence_bbox).map((x) => x.evidence_bbox).concat(c.regions);
        R.drawOverlay(canvas, img, heat, boxes);
        canvas.dataset.drawn = heat ? "heatmap" : "boxes";
      } catch (e) {
        canvas.replaceWith(document.createTextNode("(the image could not be drawn: " + e.message + ")"));
      }
    } else {
      section.appendChild(document.createTextNode("(no image file)"));
    }
    if (c.targets.length) {
      const note = document.createElement("p");
      note.textContent = "Explained: " + c.targets.join(", ") + (c.heatmap ? ` (heat map of the first, ${c.heatmap.kind})` : "");
      section.appendChild(note);
    }
    section.append(answer, claims);
  }

  document.querySelectorAll("#cases-table th button").forEach((b) => b.addEventListener("click", () => sortBy(b.parentNode)));
  document.getElementById("risk-legend").innerHTML = Object.entries(R.RISK_TEXT).map(([k, v]) => `<span class="risk-${k}">${v}</span>`).join("");
  (async () => {
    for (let n = 0; n < cases.length; n++) await drawCase(cases[n], n); // in order: sections follow the ranking
    document.body.dataset.drawn = String(cases.length);
  })();
})();
