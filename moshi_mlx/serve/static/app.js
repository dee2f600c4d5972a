// Our page for `moshi-mlx serve`: Kyutai's websocket protocol (/api/chat), Ogg/Opus both ways
// through the vendored opus-recorder (the same encoder settings as Kyutai's client).
"use strict";

const FRAME = 1920;            // samples of one 80 ms model frame at 24 kHz
const $ = (id) => document.getElementById(id);

// Counters for people and for the browser test.
const stats = window.moshiStats = {
  state: "idle", sentPages: 0, sentSamples: 0, receivedFrames: 0, receivedText: 0,
  decodedSamples: 0, playedSamples: 0, underrunSamples: 0, droppedSamples: 0,
  sampleRate: 0, latencyMs: null, errors: [],
};

let ctx = null, stream = null, recorder = null, socket = null, io = null, decoder = null;
let sendTimes = [];            // [samples sent so far (24 kHz), time] per page
let bufferedMs = 0;
let recording = { mic: [], out: [], rate: 24000 };
let transcript = "";

function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + kind;
}

async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [select, kind] of [[$("mic"), "audioinput"], [$("speaker"), "audiooutput"]]) {
    const chosen = select.value;
    select.length = 1;
    for (const d of devices.filter((d) => d.kind === kind && d.deviceId && d.deviceId !== "default")) {
      const option = new Option(d.label || `${kind} ${select.length}`, d.deviceId);
      select.add(option);
    }
    select.value = chosen;
  }
  if (!("setSinkId" in AudioContext.prototype)) $("speaker-label").hidden = true;
}

function chatUrl() {
  const url = new URL("api/chat", window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  for (const name of ["text_temperature", "text_topk", "audio_temperature", "audio_topk", "seed"]) {
    const value = $(name).value.trim();
    if (value !== "") url.searchParams.set(name, value);
  }
  return url.toString();
}

function granule24k(page) {
  // Ogg page header: "OggS", version, type, then the granule position (int64 LE, 48 kHz for Opus).
  const view = new DataView(page.buffer, page.byteOffset, page.byteLength);
  if (page.byteLength < 14 || view.getUint32(0, false) !== 0x4f676753) return null;
  const low = view.getUint32(6, true), high = view.getInt32(10, true);
  if (high === -1) return null;  // -1: no packet ends on this page
  return Math.round((high * 2 ** 32 + low) / 2);
}

function onAudioMessage(payload) {
  // The server answers each 80 ms frame we sent with one frame: frame k pairs with our frame k.
  const k = stats.receivedFrames++;
  const needed = (k + 1) * FRAME;
  while (sendTimes.length > 1 && sendTimes[1][0] <= needed) sendTimes.shift();
  const sent = sendTimes.find(([samples]) => samples >= needed);
  if (sent) {
    const ms = performance.now() - sent[1] + bufferedMs;
    stats.latencyMs = stats.latencyMs === null ? ms : 0.8 * stats.latencyMs + 0.2 * ms;
    $("latency").textContent = `${Math.round(stats.latencyMs)} ms`;
  }
  decoder.postMessage({ command: "decode", pages: payload }, [payload.buffer]);
}

function onMessage(event) {
  const data = new Uint8Array(event.data);
  if (data.length === 0) return;
  const kind = data[0], payload = data.slice(1);
  if (kind === 0) {
    setStatus("live: speak now", "live");
    stats.state = "live";
    startRecorder();
  } else if (kind === 1) {
    onAudioMessage(payload);
  } else if (kind === 2) {
    const piece = new TextDecoder().decode(payload);
    transcript += piece;
    stats.receivedText += piece.length;
    const box = $("transcript");
    box.textContent = transcript;
    box.scrollTop = box.scrollHeight;
  } else if (kind === 5) {
    const message = new TextDecoder().decode(payload);
    stats.errors.push(message);
    setStatus(`server: ${message}`, "error");
  }  // other kinds: discarded, as the protocol says
}

async function startRecorder() {
  const source = ctx.createMediaStreamSource(stream);
  source.connect(io);
  recorder = new Recorder({
    sourceNode: source, encoderPath: "vendor/encoderWorker.min.js",
    encoderSampleRate: 24000, encoderFrameSize: 20, maxFramesPerPage: 2, numberOfChannels: 1,
    encoderApplication: 2049, encoderComplexity: 0, resampleQuality: 3, streamPages: true,
    bufferLength: Math.round(960 * ctx.sampleRate / 24000), monitorGain: 0, recordingGain: 1,
  });
  recorder.ondataavailable = (page) => {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const message = new Uint8Array(page.length + 1);
    message[0] = 1;
    message.set(page, 1);
    socket.send(message);
    stats.sentPages++;
    const samples = granule24k(page);
    if (samples !== null) {
      stats.sentSamples = samples;
      sendTimes.push([samples, performance.now()]);
    }
  };
  await recorder.start();
}

async function start() {
  $("start").disabled = true;
  setStatus("starting…");
  stats.state = "starting";
  transcript = ""; $("transcript").textContent = "";
  recording = { mic: [], out: [], rate: 24000 };
  sendTimes = [];
  Object.assign(stats, { sentPages: 0, sentSamples: 0, receivedFrames: 0, receivedText: 0, decodedSamples: 0,
                         playedSamples: 0, underrunSamples: 0, droppedSamples: 0, latencyMs: null, errors: [] });
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser allows the microphone only on https or localhost pages: " +
                      "start the server with --ssl DIR, or open it as localhost");
    }
    try { ctx = new AudioContext({ sampleRate: 24000, latencyHint: "interactive" }); }
    catch (e) { ctx = new AudioContext({ latencyHint: "interactive" }); }
    stats.sampleRate = recording.rate = ctx.sampleRate;
    await ctx.audioWorklet.addModule("io-worklet.js");
    const mic = $("mic").value;
    stream = await navigator.mediaDevices.getUserMedia({ audio: {
      deviceId: mic ? { exact: mic } : undefined, channelCount: 1,
      echoCancellation: true, noiseSuppression: true, autoGainControl: true,
    } });
    listDevices();
    io = new AudioWorkletNode(ctx, "moshi-io", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    io.connect(ctx.destination);
    io.port.onmessage = (e) => {
      const s = e.data;
      Object.assign(stats, { playedSamples: s.played, underrunSamples: s.underrun, droppedSamples: s.dropped });
      bufferedMs = 1000 * s.buffered / ctx.sampleRate;
      $("in-level").value = Math.min(1, 3 * Math.sqrt(s.micLevel));
      $("out-level").value = Math.min(1, 3 * Math.sqrt(s.outLevel));
      recording.mic.push(s.mic); recording.out.push(s.out);
    };
    const speaker = $("speaker").value;
    if (speaker && ctx.setSinkId) await ctx.setSinkId(speaker);
    decoder = new Worker("vendor/decoderWorker.min.js");
    decoder.onmessage = (e) => {
      if (!e.data) return;
      const pcm = e.data[0];
      stats.decodedSamples += pcm.length;
      io.port.postMessage({ type: "audio", pcm }, [pcm.buffer]);
    };
    decoder.postMessage({ command: "init", decoderSampleRate: 24000, outputBufferSampleRate: ctx.sampleRate,
                          bufferLength: Math.round(960 * ctx.sampleRate / 24000), resampleQuality: 0 });
    socket = new WebSocket(chatUrl());
    socket.binaryType = "arraybuffer";
    socket.onmessage = onMessage;
    socket.onclose = (e) => {
      if (stats.state !== "stopped") {
        const why = stats.errors.length ? stats.errors[stats.errors.length - 1] : (e.reason || `closed (${e.code})`);
        stop(why);
      }
    };
    setStatus("connecting…");
    $("stop").disabled = false;
  } catch (e) {
    stats.errors.push(String(e));
    stop(`cannot start: ${e.message || e}`);
  }
}

async function stop(reason = "stopped") {
  stats.state = "stopped";
  if (recorder) { try { recorder.stop(); } catch (e) { /* already stopped */ } recorder = null; }
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
  if (decoder) { decoder.terminate(); decoder = null; }
  if (ctx) { await ctx.close().catch(() => {}); ctx = null; }
  setStatus(reason, reason === "stopped" ? "" : "error");
  $("start").disabled = false;
  $("stop").disabled = true;
  $("download").disabled = recording.mic.length === 0;
}

function wavBlob(left, right, rate) {
  const n = Math.min(left.length, right.length);
  const buffer = new ArrayBuffer(44 + n * 4);
  const v = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) v.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); v.setUint32(4, 36 + n * 4, true); text(8, "WAVE"); text(12, "fmt ");
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 2, true); v.setUint32(24, rate, true);
  v.setUint32(28, rate * 4, true); v.setUint16(32, 4, true); v.setUint16(34, 16, true);
  text(36, "data"); v.setUint32(40, n * 4, true);
  const clip = (x) => Math.max(-32768, Math.min(32767, Math.round(x * 32767)));
  for (let i = 0; i < n; i++) {
    v.setInt16(44 + 4 * i, clip(left[i]), true);
    v.setInt16(46 + 4 * i, clip(right[i]), true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

function joined(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

// The conversation as files: a stereo wav (left: you, right: Moshi, as heard) and Moshi's transcript.
window.moshiConversation = () => ({
  wav: wavBlob(joined(recording.mic), joined(recording.out), recording.rate),
  transcript: new Blob([transcript + "\n"], { type: "text/plain" }),
});

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => stop());
$("download").addEventListener("click", () => {
  const files = window.moshiConversation();
  const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
  download(files.wav, `moshi-${stamp}.wav`);
  download(files.transcript, `moshi-${stamp}.txt`);
});
listDevices();
