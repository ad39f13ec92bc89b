// embedx's map, part 2 of 2: what the pointer and the wheel do (a box, a lasso, a click, a hover, a zoom).
// map_canvas.py joins it after map_canvas.js into the one module Streamlit loads: the functions here use
// that file's drawing helpers (draw, drawOverlay, toData, toPixel) and constants, and mount() there binds
// them to the overlay's events.

function position(map, event) {
  const bounds = map.overlay.getBoundingClientRect();
  return [event.clientX - bounds.left, event.clientY - bounds.top];
}

function pressed(map, event) {
  if (event.button !== 0 || !map.data) return;
  hideTip(map);
  map.overlay.setPointerCapture(event.pointerId);
  const at = position(map, event);
  map.drag = { mode: map.mode, start: at, path: [at], view: map.view.slice() };
  if (map.mode === "pan") map.overlay.style.cursor = "grabbing";
}

function moved(map, event) {
  const at = position(map, event);
  const drag = map.drag;
  if (!drag) {
    map.hoverAt = at;
    if (!map.hoverQueued) {
      map.hoverQueued = true;
      requestAnimationFrame(() => {
        map.hoverQueued = false;
        if (!map.drag && map.hoverAt) hover(map, map.hoverAt);
      });
    }
    return;
  }
  if (drag.mode === "pan") {
    const [x0, x1, y0, y1] = drag.view;
    const dx = ((at[0] - drag.start[0]) / map.width) * (x1 - x0);
    const dy = ((at[1] - drag.start[1]) / map.height) * (y1 - y0);
    map.view = [x0 - dx, x1 - dx, y0 + dy, y1 + dy];
    queueDraw(map);
    return;
  }
  const last = drag.path[drag.path.length - 1];
  if (Math.hypot(at[0] - last[0], at[1] - last[1]) < 2) return;
  if (drag.mode === "box") {
    const [sx, sy] = drag.start;
    drag.path = [[sx, sy], [at[0], sy], at, [sx, at[1]]];
  } else {
    drag.path.push(at);
  }
  drawOverlay(map, drag.path);
}

function queueDraw(map) {
  if (map.drawQueued) return;
  map.drawQueued = true;
  requestAnimationFrame(() => {
    map.drawQueued = false;
    draw(map);
  });
}

function released(map, event) {
  const drag = map.drag;
  if (!drag) return;
  map.drag = null;
  const at = position(map, event);
  if (drag.mode === "pan") {
    map.overlay.style.cursor = "grab";
    return;
  }
  const moved = Math.hypot(at[0] - drag.start[0], at[1] - drag.start[1]);
  const travelled = drag.path.length > 2 || moved >= CLICK_PX;
  if (!travelled) {
    const nearest = pick(map, at);
    drawOverlay(map);
    if (nearest >= 0) {
      map.mask = new Uint8Array(map.data.n);
      map.mask[nearest] = 1;
      map.outline = null;
      draw(map);
      send(map, { points: [{ customdata: map.ids[nearest] }], box: [], lasso: [] });
    }
    return;
  }
  const outline = drag.path.map(([px, py]) => toData(map, px, py));
  const mask = new Uint8Array(map.data.n);
  let hits = 0;
  let selection;
  if (drag.mode === "box") {
    const xs = outline.map((p) => p[0]);
    const ys = outline.map((p) => p[1]);
    const [bx0, bx1, by0, by1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    for (let i = 0; i < map.data.n; i++) {
      const x = map.xy[2 * i];
      const y = map.xy[2 * i + 1];
      mask[i] = x >= bx0 && x <= bx1 && y >= by0 && y <= by1 ? 1 : 0;
      hits += mask[i];
    }
    selection = { points: [], box: [{ x: [bx0, bx1], y: [by0, by1] }], lasso: [] };
  } else {
    for (let i = 0; i < map.data.n; i++) {
      mask[i] = inside(outline, map.xy[2 * i], map.xy[2 * i + 1]) ? 1 : 0;
      hits += mask[i];
    }
    selection = { points: [], box: [], lasso: [{ x: outline.map((p) => p[0]), y: outline.map((p) => p[1]) }] };
  }
  if (!hits && !map.data.density) {
    // every row is drawn, so nothing lies inside: the server keeps the selection, and so does the picture
    drawOverlay(map);
    return;
  }
  // (on a sampled map, rows that are not drawn may lie inside: the server finds them)
  map.outline = outline;
  map.mask = mask;
  draw(map);
  send(map, selection);
}

function send(map, selection) {
  map.serial += 1;
  map.send("selection", { ...selection, serial: `${map.session}-${map.serial}` });
}

function pick(map, at) {
  let best = -1;
  let bestDistance = PICK_PX * PICK_PX;
  for (let i = 0; i < map.data.n; i++) {
    const [px, py] = toPixel(map, map.xy[2 * i], map.xy[2 * i + 1]);
    const distance = (px - at[0]) ** 2 + (py - at[1]) ** 2;
    if (distance <= bestDistance) {
      best = i;
      bestDistance = distance;
    }
  }
  return best;
}

function hover(map, at) {
  const nearest = pick(map, at);
  if (nearest < 0) return hideTip(map);
  const { data } = map;
  const code = map.codes[nearest];
  const named = data.scale
    ? code < data.colours.length - 1
      ? `${data.scale.name}: ${formatNumber(data.scale.low + (code / (data.colours.length - 2)) * (data.scale.high - data.scale.low))}`
      : data.legend[0]?.name || ""
    : data.legend[code]?.name || "";
  const text = data.hover ? data.hover[nearest] : named;
  map.tip.replaceChildren();
  element("b", "", map.tip).textContent = `row ${map.ids[nearest]}`;
  for (const line of String(text).split("<br>")) {
    if (line) element("div", "", map.tip).textContent = line;
  }
  const [px, py] = toPixel(map, map.xy[2 * nearest], map.xy[2 * nearest + 1]);
  map.tip.style.left = `${Math.min(px + 12, map.width - 180)}px`;
  map.tip.style.top = `${Math.min(py + 12, map.height - 60)}px`;
  map.tip.style.display = "block";
}

function hideTip(map) {
  map.tip.style.display = "none";
}

function wheeled(map, event) {
  if (!map.data) return;
  event.preventDefault();
  // a wheel notch (deltaY 100 pixels, or 3 lines) zooms by about a quarter
  const delta = event.deltaY * (event.deltaMode === 1 ? 33 : event.deltaMode === 2 ? 400 : 1);
  const [cx, cy] = toData(map, ...position(map, event));
  const [x0, x1, y0, y1] = map.view;
  const [ex0, ex1] = map.data.extent;
  // between 1/10,000 of the whole map and 20 times it: a view of zero width would divide by zero
  const width = Math.min(Math.max((x1 - x0) * Math.exp(Math.max(-100, Math.min(100, delta)) * 0.003),
    (ex1 - ex0) * 1e-4), (ex1 - ex0) * 20);
  const factor = width / (x1 - x0);
  map.view = [cx - (cx - x0) * factor, cx + (x1 - cx) * factor, cy - (cy - y0) * factor, cy + (y1 - cy) * factor];
  hideTip(map);
  queueDraw(map);
}

function resetView(map) {
  if (!map.data) return;
  map.view = map.data.extent.slice();
  draw(map);
}
