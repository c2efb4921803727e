// The explorer page: plain JS over the serving API, no build step.
// Each panel asks for an operation *kind* (text_to_pins, pin_to_pins, user_to_pins,
// text_to_videos, moments, summary); /api/services says which service answers it, so the
// page names no system.
"use strict";

const routes = {};  // kind -> "/api/<service>/<operation>"

const $ = (id) => document.getElementById(id);
const esc = (text) => String(text ?? "").replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);
const seconds = (s) => `${Number(s).toFixed(1)} s`;
const pinImage = (pinId) => `/media/pin/${encodeURIComponent(pinId)}`;
const frameImage = (videoId, t) => `/media/frame/${encodeURIComponent(videoId)}?t=${Math.max(0, t).toFixed(2)}`;

async function ask(kind, params) {
  const route = routes[kind];
  if (!route) throw new Error(`the server answers no ${kind} requests`);
  const response = await fetch(`${route}?${new URLSearchParams(params)}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function showVersion(panel, answer) {
  byTestId(`${panel}-version`).textContent = `${answer.model.name} v${answer.model.version}`;
}

// Run an operation for a panel: clear its error, draw the answer or say what went wrong.
async function run(panel, kind, params, draw) {
  byTestId(`${panel}-error`).textContent = "";
  try {
    const answer = await ask(kind, params);
    showVersion(panel, answer);
    draw(answer);
  } catch (err) {
    byTestId(`${panel}-error`).textContent = err.message;
  }
}

function boardsText(boards) {
  return boards && boards.length ? "boards: " + boards.map((b) => esc(b.name)).join(", ") : "no boards";
}

function pinCard(pin) {
  const card = document.createElement("div");
  card.className = "pin";
  card.dataset.pinId = pin.pin_id;
  card.innerHTML = `<img src="${pinImage(pin.pin_id)}" alt="${esc(pin.pin_id)}" loading="eager">
    <div class="score">${esc(pin.pin_id)} · ${pin.score.toFixed(3)}</div>
    <div class="caption">${esc(pin.caption)}</div>
    <div class="boards">${boardsText(pin.boards)}</div>`;
  card.addEventListener("click", () => similar(pin.pin_id));
  return card;
}

function drawPins(target, pins) {
  target.replaceChildren(...pins.map(pinCard));
}

function similar(pinId) {
  run("similar", "pin_to_pins", {pin: pinId, k: 8}, (answer) => {
    byTestId("similar-query").innerHTML = `<div class="query-pin"><img src="${pinImage(answer.pin.pin_id)}"
      alt="${esc(answer.pin.pin_id)}"><div><b>${esc(answer.pin.pin_id)}</b><br>${esc(answer.pin.caption)}
      <div class="boards">${boardsText(answer.pin.boards)}</div></div></div>`;
    drawPins($("similar-results"), answer.results);
  });
  $("similar-panel").scrollIntoView({behavior: "smooth", block: "nearest"});
}

// A ranked pin: thumbnail, click probability at the top slot, a badge when the pin is cold
// (no impression or save before the model's training cut-off).
function rankedCard(pin) {
  const card = document.createElement("div");
  card.className = pin.cold ? "pin cold" : "pin";
  card.dataset.pinId = pin.pin_id;
  card.innerHTML = `<img src="${esc(pin.image || pinImage(pin.pin_id))}" alt="${esc(pin.pin_id)}" loading="eager">
    ${pin.cold ? '<span class="badge" data-testid="cold-badge" title="no impression or save before the training cut-off">cold</span>' : ""}
    <div class="score">p_click ${pin.p_click.toFixed(4)}</div>
    <div class="caption">${esc(pin.pin_id)} · ${esc(pin.title)}</div>`;
  if (routes.pin_to_pins) card.addEventListener("click", () => similar(pin.pin_id));
  return card;
}

function drawFeed(answer) {
  const user = answer.user;
  const history = user.history.map((pinId) => `<img src="${pinImage(pinId)}" alt="${esc(pinId)}" title="${esc(pinId)}">`);
  const cold = answer.results.filter((pin) => pin.cold).length;
  byTestId("feed-user-info").innerHTML = `<div><b>${esc(user.user_id)}</b> · ${esc(user.country || "no country")}
    · signed up ${esc(user.signup_date)} · ${user.clicks} clicks (left out) · ranked for ${esc(answer.date)} at the top slot
    among ${answer.candidates} pins; ${cold} of ${answer.results.length} shown are cold (cut-off ${esc(answer.cutoff_date)})</div>
    <div class="track-label">recent clicks, newest last${history.length ? "" : ": none"}</div>
    <div class="history" data-testid="feed-history">${history.join("")}</div>`;
  $("feed-results").replaceChildren(...answer.results.map(rankedCard));
}

// A few user ids of the loaded data as buttons that rank for that user.
async function offerUsers() {
  if (!routes.example_users) return;
  try {
    const {users} = await ask("example_users", {k: 8});
    const target = byTestId("feed-examples");
    target.innerHTML = "try: " + users.map((u) =>
      `<button type="button" data-user="${esc(u.user_id)}">${esc(u.user_id)} (${u.clicks} clicks)</button>`).join(" ");
    for (const button of target.querySelectorAll("button")) {
      button.addEventListener("click", () => {
        $("feed-user").value = button.dataset.user;
        $("feed-form").requestSubmit();
      });
    }
  } catch (err) {
    byTestId("feed-error").textContent = err.message;
  }
}

// A strip of keyframes at the given times, the one nearest `best` outlined.
function strip(videoId, times, best) {
  const nearest = best == null ? -1 : times.reduce((b, t, i) => Math.abs(t - best) < Math.abs(times[b] - best) ? i : b, 0);
  const frames = times.map((t, i) => `<div class="frame${i === nearest ? " best" : ""}">
    <img src="${frameImage(videoId, t)}" alt="${esc(videoId)} at ${seconds(t)}"><div class="t">${seconds(t)}</div></div>`);
  return `<div class="strip" data-testid="strip">${frames.join("")}</div>`;
}

function evenly(duration, n) {
  return Array.from({length: n}, (_, i) => (i + 0.5) * duration / n);
}

function drawVideos(answer) {
  $("videos-results").innerHTML = answer.results.map((video) => {
    const duration = video.duration_s || (video.best_s || 0) + 1;
    return `<div class="video" data-video-id="${esc(video.video_id)}">
      <div><span class="title" data-video="${esc(video.video_id)}">${esc(video.video_id)} · ${esc(video.title)}</span>
      · score ${video.score.toFixed(3)} · best second ${video.best_s == null ? "?" : seconds(video.best_s)}
      of ${seconds(duration)}</div>${strip(video.video_id, evenly(duration, 8), video.best_s)}</div>`;
  }).join("");
  for (const title of $("videos-results").querySelectorAll(".title")) {
    title.addEventListener("click", () => {  // a video into the moment and summary panels
      $("moments-video").value = title.dataset.video;
      $("summary-video").value = title.dataset.video;
      $("moments-q").value = $("moments-q").value || $("videos-q").value;
      $("moments-panel").scrollIntoView({behavior: "smooth", block: "nearest"});
    });
  }
}

// Spans [{start_s, end_s, label, cls}] as blocks on a bar as long as the video.
function timeline(duration, spans, testId) {
  const blocks = spans.map((s) => {
    const left = 100 * s.start_s / duration, width = Math.max(0.5, 100 * (s.end_s - s.start_s) / duration);
    return `<div class="span ${s.cls}" style="left:${left}%;width:${width}%" title="${esc(s.title || s.label)}">${esc(s.label)}</div>`;
  });
  return `<div class="timeline" data-testid="${testId}">${blocks.join("")}</div>`;
}

function drawMoments(answer) {
  const duration = answer.duration_s || Math.max(...answer.results.map((s) => s.end_s), 1);
  const predicted = answer.results.map((s, i) => ({start_s: s.start_s, end_s: s.end_s, cls: i ? "pred" : "pred top",
    label: `#${i + 1} ${s.score.toFixed(2)}`, title: `${seconds(s.start_s)}-${seconds(s.end_s)} score ${s.score}`}));
  // one row per predicted span (they often overlap), best first, then the truth
  let html = `<div class="track-label">predicted spans, best first (${seconds(0)} to ${seconds(duration)})</div>`
    + predicted.map((span) => timeline(duration, [span], "moment-timeline")).join("");
  if (answer.truth && answer.truth.length) {
    const truth = answer.truth.map(([start, end]) => ({start_s: start, end_s: end, cls: "truth",
      label: "true", title: `true window ${seconds(start)}-${seconds(end)}`}));
    html += `<div class="track-label">true window</div>` + timeline(duration, truth, "truth-timeline");
  } else {
    html += `<div class="track-label">no known true window for this query</div>`;
  }
  html += strip(answer.video_id, evenly(duration, 10), answer.results.length ? answer.results[0].start_s : null);
  $("moments-results").innerHTML = html;
}

function drawSummary(answer) {
  const shots = answer.results;
  const duration = Math.max(...shots.map((s) => s.end_s), 1);
  const kept = shots.filter((s) => s.selected);
  const bar = shots.map((s) => ({start_s: s.start_s, end_s: s.end_s, cls: s.selected ? "shot selected" : "shot",
    label: `${s.shot_id}`, title: `shot ${s.shot_id} ${seconds(s.start_s)}-${seconds(s.end_s)} score ${s.score}`}));
  const frames = shots.map((s) => `<div class="frame${s.selected ? " selected" : ""}" data-shot="${s.shot_id}">
    <img src="${frameImage(answer.video_id, (s.start_s + s.end_s) / 2)}" alt="shot ${s.shot_id}">
    <div class="score">shot ${s.shot_id} · ${s.score.toFixed(3)}</div><div class="t">${seconds(s.start_s)}-${seconds(s.end_s)}</div></div>`);
  const budget = Object.entries(answer.budget).map(([k, v]) => `${k} ${v}`).join(", ");
  $("summary-results").innerHTML = `<div class="track-label">${kept.length} of ${shots.length} shots kept (budget ${esc(budget)})</div>`
    + timeline(duration, bar, "summary-timeline") + `<div class="strip shots" data-testid="summary-shots">${frames.join("")}</div>`;
}

function bind(formId, panel, kind, fields, draw) {
  $(formId).addEventListener("submit", (event) => {
    event.preventDefault();
    const params = Object.fromEntries(fields.map((f) => [f, $(`${panel}-${f}`).value]));
    run(panel, kind, params, draw);
  });
}

async function start() {
  try {
    const response = await fetch("/api/services");
    const {services} = await response.json();
    const versions = [];
    for (const [name, service] of Object.entries(services)) {
      for (const operation of service.operations) routes[operation.kind] = `/api/${name}/${operation.name}`;
      versions.push(`${service.registered_model} ${service.version ? "v" + service.version : "(not loaded)"}`);
    }
    $("health").textContent = versions.join(" · ");
  } catch (err) {
    $("health").textContent = `cannot reach the server: ${err.message}`;
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = !routes[panel.dataset.kind];
  bind("pins-form", "pins", "text_to_pins", ["q", "k"], (answer) => drawPins($("pins-results"), answer.results));
  bind("feed-form", "feed", "user_to_pins", ["user", "k"], drawFeed);
  bind("videos-form", "videos", "text_to_videos", ["q", "k"], drawVideos);
  bind("moments-form", "moments", "moments", ["video", "q", "k"], drawMoments);
  bind("summary-form", "summary", "summary", ["video", "q"], drawSummary);
  await offerUsers();
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
