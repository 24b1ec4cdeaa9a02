// The unipose-sdk web demo: calls the service's /v1 endpoints and draws the 22-joint skeleton on a 2D canvas
// with its own small 3D projection (no library, no CDN: it works offline). Errors are shown as the service
// words them (its received / expected / fix text).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("skeleton");
  const ctx = canvas.getContext("2d");
  const DEFAULT_VIEW = { yaw: 0.55, pitch: 0.2 };
  // pose: the shown pose ({rotmat, joints, codes}); chat: the conversation so far, in /v1/chat's history layout
  // (the service keeps nothing between requests, so the page sends the whole conversation with each turn).
  const state = { skeleton: null, pose: null, source: null, chat: [], view: { ...DEFAULT_VIEW }, keyRequired: false };

  // ------------------------------------------------------------------ service calls

  function headers(json) {
    const h = { Accept: "application/json" };
    if (json) h["Content-Type"] = "application/json";
    const key = $("api-key").value;
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  class ServiceError extends Error {
    constructor(status, error) {
      super(error && error.message ? error.message : "HTTP " + status);
      this.status = status;
      this.kind = error && error.type ? error.type : "HTTP " + status;
    }
  }

  async function call(method, path, body) {
    const form = body instanceof FormData;
    const started = performance.now();
    let response;
    try {
      response = await fetch(path, { method, headers: headers(body !== undefined && !form),
                                     body: body === undefined ? undefined : form ? body : JSON.stringify(body) });
    } catch (err) {
      throw new ServiceError(0, { type: "NetworkError", message: "the service did not answer (" + err + ")" });
    }
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    const roundTripMs = performance.now() - started;
    if (!response.ok) {
      const error = data && data.error ? data.error : { message: "HTTP " + response.status };
      if (response.status === 503 && response.headers.get("Retry-After")) {
        error.message += " (retry after " + response.headers.get("Retry-After") + " s)";
      }
      throw new ServiceError(response.status, error);
    }
    return { data, roundTripMs };
  }

  async function ensureSkeleton() {
    if (state.skeleton) return;
    const { data } = await call("GET", "/v1/model");
    state.skeleton = data.skeleton;
    $("service").textContent = "model " + data.default_model + " (" + data.models[0].run.backend + " on " +
      data.models[0].run.device + "), batches up to " + data.max_batch;
  }

  // ------------------------------------------------------------------ showing results and errors

  function showError(err) {
    const box = $("error");
    box.replaceChildren();
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = (err.status ? err.status + " " : "") + (err.kind || "Error") + ": ";
    box.append(kind, document.createTextNode(err.message));
    box.hidden = false;
  }

  function showTimings(rows) {
    const list = $("timings");
    list.replaceChildren();
    for (const [name, value] of rows) {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value;
      dd.style.margin = "0";
      list.append(dt, dd);
    }
  }

  function show(data, roundTripMs) {
    const result = data.results[0];
    const chatPoses = result.kind === "AssistantReply" ? result.poses : [];
    if (result.pose_joints_m) {
      state.pose = { rotmat: result.pose_rotmat, joints: result.pose_joints_m, codes: result.pose_codes || null };
      state.source = result.source_pose_joints_m || null;
      draw();
    } else if (chatPoses.length) {  // a reply's last pose; its codes go back into later turns unchanged
      const last = chatPoses[chatPoses.length - 1];
      state.pose = { rotmat: last.rotmat, joints: last.joints_m, codes: last.codes };
      state.source = null;
      draw();
    }
    $("text").textContent = result.kind === "DescribeResult" ? result.text : "";
    const ms = (v) => v.toFixed(1) + " ms";
    const model = result.kind === "AssistantReply" ? "model (one turn)" : "model (batch of " + result.batch_size + ")";
    const rows = [["round trip", ms(roundTripMs)], ["service", ms(data.service_ms.total)],
                  [model, ms(result.timing_ms.total)]];
    for (const [stage, value] of Object.entries(result.timing_ms)) {
      if (stage !== "total") rows.push(["  " + stage, ms(value)]);
    }
    showTimings(rows);
  }

  async function run(button, work) {
    $("error").hidden = true;
    const buttons = document.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      await ensureSkeleton();
      const { data, roundTripMs } = await work();
      show(data, roundTripMs);
    } catch (err) {
      showError(err);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  function currentPose() {
    if (!state.pose) {
      throw new ServiceError(0, { type: "NoPose", message: "there is no pose yet: generate or estimate one first" });
    }
    return { array: state.pose.rotmat, dtype: "float32" };
  }

  $("generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run($("generate"), () => call("POST", "/v1/generate", { text: $("prompt").value }));
  });
  $("estimate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run($("estimate"), () => {
      const form = new FormData();
      const file = $("image").files[0];
      if (file) form.append("image", file, file.name);
      return call("POST", "/v1/estimate", form);
    });
  });
  $("edit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run($("edit"), () => call("POST", "/v1/edit", { pose: currentPose(), instruction: $("instruction").value }));
  });
  $("describe-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run($("describe"), () => call("POST", "/v1/describe", { pose: currentPose() }));
  });

  function chatPose() {
    if (!state.pose) {
      throw new ServiceError(0, { type: "NoPose", message: "the turn has <pose> but there is no pose yet: " +
                                  "generate or estimate one first" });
    }
    const codes = state.pose.codes;  // none for a ChatPose pose: then the pose itself
    return codes && codes.length ? { codes } : { array: state.pose.rotmat, dtype: "float32" };
  }

  function logTurn(who, text) {
    const item = document.createElement("li");
    item.className = who;
    item.textContent = text;
    $("chat-log").append(item);
    item.scrollIntoView({ block: "nearest" });
  }

  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-text").value;
    run($("send"), async () => {
      const poses = Array.from({ length: (text.match(/<pose>/g) || []).length }, chatPose);
      const answer = await call("POST", "/v1/chat", { history: state.chat, text, poses });
      const reply = answer.data.results[0];
      // Only an answered turn joins the history: a refused one leaves the conversation as it was.
      state.chat.push({ text, poses, reply: { text: reply.text, pose_codes: reply.poses.map((p) => p.codes) } });
      logTurn("user", text);
      logTurn("assistant", reply.text.trim() || "(no text)");
      $("chat-text").value = "";
      return answer;
    });
  });
  $("new-chat").addEventListener("click", () => {
    state.chat = [];
    $("chat-log").replaceChildren();
    $("error").hidden = true;
  });

  // ------------------------------------------------------------------ the 3D view

  function project(p, center, scale) {
    const { yaw, pitch } = state.view;
    const x = p[0] - center[0], y = p[1] - center[1], z = p[2] - center[2];
    const xr = Math.cos(yaw) * x + Math.sin(yaw) * z;
    const zr = -Math.sin(yaw) * x + Math.cos(yaw) * z;
    const yr = Math.cos(pitch) * y - Math.sin(pitch) * zr;
    const depth = Math.sin(pitch) * y + Math.cos(pitch) * zr;
    return [canvas.width / 2 + scale * xr, canvas.height / 2 - scale * yr, depth];
  }

  function side(name) {
    return name.startsWith("left_") ? "#1f6fd1" : name.startsWith("right_") ? "#d1431f" : "#39424e";
  }

  function draw() {
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!state.pose || !state.skeleton) {
      canvas.dataset.drawn = "none";
      return;
    }
    const joints = state.pose.joints;
    const lo = [0, 1, 2].map((k) => Math.min(...joints.map((j) => j[k])));
    const hi = [0, 1, 2].map((k) => Math.max(...joints.map((j) => j[k])));
    const center = [0, 1, 2].map((k) => (lo[k] + hi[k]) / 2);
    const scale = canvas.height * 0.38;  // pixels per metre: a 1.7 m person fills about two thirds
    // The floor under the lowest joint, as a grid: it shows which way is down once the view is rotated.
    ctx.strokeStyle = "#e2e6ec";
    ctx.lineWidth = 1;
    for (let i = -5; i <= 5; i++) {
      for (const [a, b] of [[[i * 0.2, lo[1], -1], [i * 0.2, lo[1], 1]], [[-1, lo[1], i * 0.2], [1, lo[1], i * 0.2]]]) {
        const pa = project([center[0] + a[0], a[1], center[2] + a[2]], center, scale);
        const pb = project([center[0] + b[0], b[1], center[2] + b[2]], center, scale);
        ctx.beginPath(); ctx.moveTo(pa[0], pa[1]); ctx.lineTo(pb[0], pb[1]); ctx.stroke();
      }
    }
    const layers = state.source ? [[state.source, 0.25], [joints, 1.0]] : [[joints, 1.0]];
    const { parents, joint_names: names } = state.skeleton;
    for (const [points, alpha] of layers) {
      const screen = points.map((p) => project(p, center, scale));
      const bones = [];
      for (let j = 1; j < parents.length; j++) bones.push([parents[j], j]);
      bones.sort((a, b) => (screen[a[0]][2] + screen[a[1]][2]) - (screen[b[0]][2] + screen[b[1]][2]));
      ctx.globalAlpha = alpha;
      ctx.lineCap = "round";
      ctx.lineWidth = 7;
      for (const [p, c] of bones) {
        ctx.strokeStyle = side(names[c]);
        ctx.beginPath(); ctx.moveTo(screen[p][0], screen[p][1]); ctx.lineTo(screen[c][0], screen[c][1]); ctx.stroke();
      }
      for (let j = 0; j < screen.length; j++) {
        ctx.fillStyle = j === 15 ? "#39424e" : "#ffffff";
        ctx.strokeStyle = side(names[j]);
        ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(screen[j][0], screen[j][1], j === 15 ? 11 : 4.5, 0, 2 * Math.PI);
        ctx.fill(); ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
    canvas.dataset.drawn = state.source ? "edit" : "pose";
  }

  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, view: { ...state.view } };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    state.view.yaw = drag.view.yaw + (event.clientX - drag.x) * 0.01;
    state.view.pitch = Math.max(-1.5, Math.min(1.5, drag.view.pitch + (event.clientY - drag.y) * 0.01));
    draw();
  });
  canvas.addEventListener("pointerup", () => { drag = null; });
  canvas.addEventListener("dblclick", () => { state.view = { ...DEFAULT_VIEW }; draw(); });

  // ------------------------------------------------------------------ start

  call("GET", "/v1/health").then(({ data }) => {
    state.keyRequired = data.api_key_required;
    $("key-row").hidden = !data.api_key_required;
    $("service").textContent = "service " + data.status + " (unipose-sdk " + data.version + ")";
    if (!data.api_key_required) ensureSkeleton().catch(showError);
  }).catch(showError);
  draw();
})();
