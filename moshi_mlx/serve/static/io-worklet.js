// The page's audio thread: plays Moshi's audio from a small jitter buffer, and reports what was
// said and heard (both aligned on the audio clock), their levels, and the playback counters.
class MoshiIO extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = [];          // Moshi's audio waiting to be played (Float32Array)
    this.offset = 0;           // samples of chunks[0] already played
    this.buffered = 0;
    this.playing = false;
    this.startAt = Math.round(0.12 * sampleRate);  // buffer 120 ms before (re)starting playback
    this.maxBuffered = Math.round(0.6 * sampleRate); // beyond: drop the oldest (latency must not grow)
    this.played = 0; this.underrun = 0; this.dropped = 0;
    this.reportEvery = Math.round(0.1 * sampleRate);
    this.mic = new Float32Array(this.reportEvery + 128);
    this.out = new Float32Array(this.reportEvery + 128);
    this.n = 0; this.micSq = 0; this.outSq = 0;
    this.port.onmessage = (e) => {
      if (e.data.type === "audio") this.push(e.data.pcm);
    };
  }

  push(pcm) {
    this.chunks.push(pcm);
    this.buffered += pcm.length;
    while (this.buffered > this.maxBuffered) {
      const head = this.chunks[0].length - this.offset;
      const excess = this.buffered - this.startAt;
      if (head <= excess) { this.chunks.shift(); this.offset = 0; this.buffered -= head; this.dropped += head; }
      else { this.offset += excess; this.buffered -= excess; this.dropped += excess; }
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const mic = inputs[0] && inputs[0][0];
    const n = out.length;
    if (!this.playing && this.buffered >= this.startAt) this.playing = true;
    let i = 0;
    while (this.playing && i < n && this.chunks.length) {
      const chunk = this.chunks[0];
      const take = Math.min(n - i, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + take), i);
      i += take; this.offset += take; this.buffered -= take;
      if (this.offset === chunk.length) { this.chunks.shift(); this.offset = 0; }
    }
    this.played += i;
    if (this.playing && i < n) { this.underrun += n - i; this.playing = false; }  // rebuffer
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    for (let k = 0; k < n; k++) {
      const m = mic ? mic[k] : 0;
      this.mic[this.n + k] = m; this.out[this.n + k] = out[k];
      this.micSq += m * m; this.outSq += out[k] * out[k];
    }
    this.n += n;
    if (this.n >= this.reportEvery) {
      const mic = this.mic.slice(0, this.n), said = this.out.slice(0, this.n);
      this.port.postMessage({
        type: "stats", played: this.played, underrun: this.underrun, dropped: this.dropped,
        buffered: this.buffered, micLevel: Math.sqrt(this.micSq / this.n), outLevel: Math.sqrt(this.outSq / this.n),
        mic, out: said,
      }, [mic.buffer, said.buffer]);
      this.n = 0; this.micSq = 0; this.outSq = 0;
    }
    return true;
  }
}

registerProcessor("moshi-io", MoshiIO);
