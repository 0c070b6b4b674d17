// The event feed client: one WebSocket to /ws/events that resumes where it stopped.
//
// It remembers the id of the last event it received and reconnects with since=<that id> after any drop
// (network, server restart, or the server's "too slow" close 4429), so nothing is missed and nothing is
// delivered twice. Close codes (services/api/routes/ws.py): 4401/4403 the key is refused, 4400 a bad
// parameter, 4410 the log no longer holds our position (the page must reload its state over REST).
"use strict";

class Feed {
  constructor({ token, since = null, params = {}, onEvent, onState = () => {}, onFatal = () => {}, onGone = () => {} }) {
    this.token = token;
    this.lastId = since;
    this.params = params;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onFatal = onFatal;
    this.onGone = onGone;
    this.ws = null;
    this.stopped = false;
    this.retryMs = 250;
    this.timer = null;
  }

  url() {
    // batch=1: each message is an array of the events that were ready together (fewer frames when busy).
    const q = new URLSearchParams({ token: this.token, batch: "1", ...this.params });
    if (this.lastId) q.set("since", this.lastId);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/events?${q}`;
  }

  start() {
    this.stopped = false;
    this.open();
    return this;
  }

  open() {
    this.onState(this.lastId ? "retry" : "off");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => { this.retryMs = 250; this.onState("on"); };
    ws.onmessage = (m) => {
      let events;
      try { events = JSON.parse(m.data); } catch { return; }
      for (const event of Array.isArray(events) ? events : [events]) {
        this.lastId = event.id;
        this.onEvent(event);
      }
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (e.code === 4401 || e.code === 4403 || e.code === 4400) {
        this.onState("off");
        this.onFatal(e.code, e.reason);
        return;
      }
      if (e.code === 4410) {
        this.onState("off");
        this.onGone();
        return;
      }
      this.onState("retry");
      // The server asked a slow client to come back: do so at once; otherwise back off a little.
      const delay = e.code === 4429 ? 0 : this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, 5000);
      this.timer = setTimeout(() => this.open(), delay);
    };
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
  }
}

window.Feed = Feed;
