// embedx's map: a Streamlit v2 component that draws the explorer's 2-D map on a canvas.
//
// Why not Plotly: a page with st.plotly_chart is drawn ~2.3 s later than one without it, before a single
// point (bench/dashboard_floor.py); this canvas adds ~0.1 s. The data comes from map_payload.py: packed
// float32 coordinates, int32 row ids, uint16 colour codes and uint8 flags (base64), a density image of every
// row, rings for highlighted rows. A box or lasso is sent back as its outline in data coordinates, a click as
// the clicked point's row id — Plotly's selection shape, {selection: {points, box, lasso}}, plus a serial that
// makes a repeat of the same selection after "Clear selection" a new event.
//
// Streamlit calls this function again only when the data changes (a recolour, a filter, a new kept
// selection baked in); a lasso's rerun that sends the same data leaves the drawing and the zoom as they are.

const INSTANCES = new WeakMap();
const FADED = 0.15;
const CLICK_PX = 4; // a press that moves less than this is a click
const PICK_PX = 8; // a click or hover finds the nearest point within this

function decode(text, Type) {
  const raw = atob(text || "");
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new Type(bytes.buffer);
}

function inside(polygon, x, y) {
  let hit = false;
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
    const [xi, yi] = polygon[i];
    const [xj, yj] = polygon[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

function element(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.appendChild(node);
  return node;
}

function mount(root) {
  root.replaceChildren();
  const map = {
    root,
    mode: "lasso",
    serial: 0,
    session: Math.random().toString(36).slice(2, 10),
    viewName: null,
    view: null,
    drag: null,
    mask: null, // the local selection drawn after a box or lasso, until the next data
    outline: null,
    hoverQueued: false,
    drawQueued: false,
    send: null,
  };
  map.title = element("div", "embedx-map-title", root);
  const bar = element("div", "embedx-map-bar", root);
  for (const [mode, label, tip] of [
    ["lasso", "Lasso", "Draw around points to select them"],
    ["box", "Box", "Drag a rectangle to select the points in it"],
    ["pan", "Pan", "Drag to move the map (the wheel zooms in every mode)"],
  ]) {
    const button = element("button", "embedx-map-mode", bar);
    button.type = "button";
    button.textContent = label;
    button.title = tip;
    button.dataset.mode = mode;
    button.onclick = () => setMode(map, mode);
  }
  const reset = element("button", "embedx-map-reset", bar);
  reset.type = "button";
  reset.textContent = "Reset view";
  reset.title = "Show the whole map";
  reset.onclick = () => resetView(map);
  map.status = element("span", "embedx-map-status", bar);
  map.stage = element("div", "embedx-map-stage", root);
  map.canvas = element("canvas", "embedx-map-points", map.stage);
  map.overlay = element("canvas", "embedx-map-overlay", map.stage);
  map.tip = element("div", "embedx-map-tip", map.stage);
  map.legend = element("div", "embedx-map-legend", root);
  setMode(map, "lasso");

  const overlay = map.overlay;
  overlay.addEventListener("pointerdown", (event) => pressed(map, event));
  overlay.addEventListener("pointermove", (event) => moved(map, event));
  overlay.addEventListener("pointerup", (event) => released(map, event));
  overlay.addEventListener("pointerleave", () => hideTip(map));
  overlay.addEventListener("wheel", (event) => wheeled(map, event), { passive: false });
  overlay.addEventListener("pointercancel", () => {
    map.drag = null;
    drawOverlay(map);
  });
  map.resizer = new ResizeObserver(() => {
    if (map.data && sizeCanvases(map)) draw(map);
  });
  map.resizer.observe(map.stage);
  return map;
}

function setMode(map, mode) {
  map.mode = mode;
  for (const button of map.root.querySelectorAll(".embedx-map-mode")) {
    button.classList.toggle("active", button.dataset.mode === mode);
  }
  map.overlay.style.cursor = mode === "pan" ? "grab" : "crosshair";
}

function load(map, data) {
  map.loadedAt = performance.now();
  const n = data.n;
  map.data = data;
  map.xy = decode(data.xy, Float32Array);
  map.ids = decode(data.ids, Int32Array);
  map.codes = decode(data.codes, Uint16Array);
  map.flags = decode(data.flags, Uint8Array);
  map.rings = data.highlight ? decode(data.highlight.xy, Float32Array) : new Float32Array(0);
  // points grouped by colour, drawn in legend order: one fillStyle per group
  const groups = data.colours.map(() => []);
  for (let i = 0; i < n; i++) groups[map.codes[i]].push(i);
  map.groups = groups.map((members) => Int32Array.from(members));
  if (map.viewName !== data.view || !map.view) {
    map.viewName = data.view;
    map.view = data.extent.slice();
  }
  map.mask = null;
  map.outline = null;
  map.title.textContent = data.title || "";
  map.title.style.display = data.title ? "" : "none";
  map.stage.style.height = `${data.height}px`;
  legend(map, data);
  map.image = null;
  if (data.density) {
    const image = new Image();
    image.onload = () => {
      if (map.data === data) {
        map.image = image;
        draw(map);
      }
    };
    image.src = data.density.url;
  }
  sizeCanvases(map);
  draw(map);
  prefetch(data.prefetch);
}

// Streamlit's scripts for the selection panel, loaded once the map is drawn and the browser is idle
let prefetched = false;
function prefetch(paths) {
  if (prefetched || !paths || !paths.length) return;
  prefetched = true;
  const later = window.requestIdleCallback || ((fn) => setTimeout(fn, 200));
  later(() => {
    for (const path of paths) import(new URL(path, document.baseURI).href).catch(() => {});
  });
}

function legend(map, data) {
  map.legend.replaceChildren();
  if (data.scale) {
    const scale = element("span", "embedx-map-scale", map.legend);
    const stops = data.colours.slice(0, -1);
    const picked = [0, 0.25, 0.5, 0.75, 1].map((t) => stops[Math.round(t * (stops.length - 1))]);
    element("span", "embedx-map-scale-name", scale).textContent = data.scale.name;
    element("span", "embedx-map-scale-end", scale).textContent = formatNumber(data.scale.low);
    element("span", "embedx-map-scale-bar", scale).style.background = `linear-gradient(to right, ${picked.join(",")})`;
    element("span", "embedx-map-scale-end", scale).textContent = formatNumber(data.scale.high);
  }
  for (const entry of data.legend) {
    const item = element("span", "embedx-map-item", map.legend);
    element("span", "embedx-map-swatch", item).style.background = entry.colour;
    element("span", "embedx-map-name", item).textContent = `${entry.name} (${entry.count.toLocaleString()})`;
  }
}

function formatNumber(value) {
  return Math.abs(value) >= 1000 || Number.isInteger(value) ? value.toLocaleString() : value.toPrecision(3);
}

function sizeCanvases(map) {
  const width = Math.max(map.stage.clientWidth, 50);
  const height = map.data.height;
  const ratio = window.devicePixelRatio || 1;
  if (map.width === width && map.height === height && map.ratio === ratio) return false;
  Object.assign(map, { width, height, ratio });
  for (const canvas of [map.canvas, map.overlay]) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
  }
  return true;
}

// data coordinates <-> CSS pixels of the stage
function toPixel(map, x, y) {
  const [x0, x1, y0, y1] = map.view;
  return [((x - x0) / (x1 - x0)) * map.width, ((y1 - y) / (y1 - y0)) * map.height];
}

function toData(map, px, py) {
  const [x0, x1, y0, y1] = map.view;
  return [x0 + (px / map.width) * (x1 - x0), y1 - (py / map.height) * (y1 - y0)];
}

function selectedMask(map) {
  if (map.mask) return map.mask;
  if (!map.data.any_selected) return null;
  return map.flags;
}

function draw(map) {
  const { data } = map;
  const context = map.canvas.getContext("2d");
  context.setTransform(map.ratio, 0, 0, map.ratio, 0, 0);
  context.clearRect(0, 0, map.width, map.height);
  if (map.image) {
    const [ex0, ex1, ey0, ey1] = data.density.extent;
    const [left, top] = toPixel(map, ex0, ey1);
    const [right, bottom] = toPixel(map, ex1, ey0);
    context.imageSmoothingEnabled = false;
    context.drawImage(map.image, left, top, right - left, bottom - top);
  }
  const mask = selectedMask(map);
  const size = data.size;
  const half = size / 2;
  const round = data.n <= 5000;
  const [x0, x1, y0, y1] = map.view;
  const sx = map.width / (x1 - x0);
  const sy = map.height / (y1 - y0);
  const passes = mask ? [[0, FADED], [1, 1]] : [[null, 1]];
  let shown = 0;
  for (const [wanted, alpha] of passes) {
    context.globalAlpha = alpha;
    map.groups.forEach((members, code) => {
      if (!members.length) return;
      context.fillStyle = data.colours[code];
      context.beginPath();
      for (const i of members) {
        if (wanted !== null && (mask[i] & 1) !== wanted) continue;
        const px = (map.xy[2 * i] - x0) * sx;
        const py = (y1 - map.xy[2 * i + 1]) * sy;
        if (px < -size || py < -size || px > map.width + size || py > map.height + size) continue;
        shown += 1;
        if (round) {
          context.moveTo(px + half, py);
          context.arc(px, py, half, 0, 2 * Math.PI);
        } else {
          context.rect(px - half, py - half, size, size);
        }
      }
      context.fill();
    });
  }
  context.globalAlpha = 1;
  if (map.rings.length) {
    context.strokeStyle = "black";
    context.lineWidth = 1.5;
    context.beginPath();
    const radius = half + 2;
    for (let i = 0; i < map.rings.length; i += 2) {
      const [px, py] = toPixel(map, map.rings[i], map.rings[i + 1]);
      context.moveTo(px + radius, py);
      context.arc(px, py, radius, 0, 2 * Math.PI);
    }
    context.stroke();
  }
  drawOverlay(map);
  const selected = mask ? mask.reduce((sum, flag) => sum + (flag & 1), 0) : 0;
  map.status.textContent = data.highlight
    ? `${data.highlight.total.toLocaleString()} highlighted`
    : selected
      ? `${selected.toLocaleString()} of ${data.n.toLocaleString()} drawn points selected`
      : "";
  // what the browser tests read: the points drawn, their legend and the selected count
  map.root.embedxMap = {
    n: data.n,
    shown,
    selected,
    legend: data.legend.map((entry) => entry.name),
    view: map.view.slice(),
    density: !!map.image,
    sampled: !!data.density,
    // milliseconds since the page opened: data received, and this drawing (what the benchmark reports)
    loadedAt: map.loadedAt,
    drawnAt: performance.now(),
    // where the drawn point of store row `row` is, in page pixels (null when it is not drawn)
    locate: (row) => {
      const i = map.ids.indexOf(row);
      if (i < 0) return null;
      const [px, py] = toPixel(map, map.xy[2 * i], map.xy[2 * i + 1]);
      const bounds = map.overlay.getBoundingClientRect();
      return [bounds.left + px, bounds.top + py];
    },
  };
  map.root.dataset.drawn = String((Number(map.root.dataset.drawn) || 0) + 1);
}

function drawOverlay(map, live) {
  const context = map.overlay.getContext("2d");
  context.setTransform(map.ratio, 0, 0, map.ratio, 0, 0);
  context.clearRect(0, 0, map.width, map.height);
  const path = live || (map.outline && map.outline.map(([x, y]) => toPixel(map, x, y)));
  if (!path || path.length < 2) return;
  context.strokeStyle = "#1f3b73";
  context.fillStyle = "rgba(31, 59, 115, 0.06)";
  context.lineWidth = 1.5;
  context.setLineDash([5, 4]);
  context.beginPath();
  context.moveTo(path[0][0], path[0][1]);
  for (const [px, py] of path.slice(1)) context.lineTo(px, py);
  context.closePath();
  context.fill();
  context.stroke();
}

// the same points, colours, selection, rings, image and frame: a re-render that keeps the outline and zoom
function sameDrawing(a, b) {
  if (!b) return false;
  const fields = ["drawing", "xy", "ids", "codes", "flags", "title", "height", "view", "size"];
  return (
    fields.every((field) => a[field] === b[field]) &&
    a.colours.join() === b.colours.join() &&
    a.highlight?.xy === b.highlight?.xy &&
    a.density?.url === b.density?.url
  );
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const root = parentElement.querySelector(".embedx-map");
  let map = INSTANCES.get(root);
  if (!map) {
    map = mount(root);
    INSTANCES.set(root, map);
  }
  map.send = setStateValue;
  if (data && !sameDrawing(data, map.data)) load(map, data);
  return () => {
    map.resizer.disconnect();
    INSTANCES.delete(root);
  };
}

