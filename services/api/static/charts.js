// Two small canvas charts, no library: stacked bars (completed/failed per minute) and a rate line.
"use strict";

const Charts = (() => {
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";

  function setup(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width;
    const h = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
    if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "10px system-ui, sans-serif";
    return { ctx, w, h };
  }

  function axes(ctx, w, h, pad, max, fmt) {
    ctx.strokeStyle = "#e3e6ea";
    ctx.fillStyle = "#6b7280";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + (h - pad.t - pad.b) * (1 - i / 4);
      ctx.beginPath();
      ctx.moveTo(pad.l, y + 0.5);
      ctx.lineTo(w - pad.r, y + 0.5);
      ctx.stroke();
      ctx.fillText(fmt((max * i) / 4), 2, y + 3);
    }
  }

  function minuteLabel(ms) {
    const d = new Date(ms);
    return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  }

  // buckets: [{start, completed, failed}] oldest first
  function throughput(canvas, buckets) {
    const { ctx, w, h } = setup(canvas);
    const pad = { l: 34, r: 6, t: 8, b: 16 };
    const max = Math.max(4, ...buckets.map((b) => b.completed + b.failed));
    const nice = Math.ceil(max / 4) * 4;
    axes(ctx, w, h, pad, nice, (v) => String(Math.round(v)));
    const plotH = h - pad.t - pad.b;
    const slot = (w - pad.l - pad.r) / Math.max(1, buckets.length);
    buckets.forEach((b, i) => {
      const x = pad.l + i * slot + 2;
      const bw = Math.max(1, slot - 4);
      const hc = (b.completed / nice) * plotH;
      const hf = (b.failed / nice) * plotH;
      ctx.fillStyle = css("--ok");
      ctx.fillRect(x, pad.t + plotH - hc, bw, hc);
      ctx.fillStyle = css("--bad");
      ctx.fillRect(x, pad.t + plotH - hc - hf, bw, hf);
      if (i % 3 === 0 || i === buckets.length - 1) {
        ctx.fillStyle = "#6b7280";
        ctx.fillText(minuteLabel(b.start), x, h - 3);
      }
    });
  }

  function errorRate(canvas, buckets) {
    const { ctx, w, h } = setup(canvas);
    const pad = { l: 34, r: 6, t: 8, b: 16 };
    axes(ctx, w, h, pad, 1, (v) => `${Math.round(v * 100)}%`);
    const plotH = h - pad.t - pad.b;
    const slot = (w - pad.l - pad.r) / Math.max(1, buckets.length);
    ctx.strokeStyle = css("--bad");
    ctx.fillStyle = css("--bad");
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    buckets.forEach((b, i) => {
      const n = b.completed + b.failed;
      const x = pad.l + i * slot + slot / 2;
      if (!n) { drawing = false; return; }
      const y = pad.t + plotH * (1 - b.failed / n);
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
      ctx.fillRect(x - 2, y - 2, 4, 4);
    });
    ctx.stroke();
    ctx.fillStyle = "#6b7280";
    buckets.forEach((b, i) => {
      if (i % 3 === 0 || i === buckets.length - 1) ctx.fillText(minuteLabel(b.start), pad.l + i * slot + 2, h - 3);
    });
  }

  return { throughput, errorRate };
})();

window.Charts = Charts;
