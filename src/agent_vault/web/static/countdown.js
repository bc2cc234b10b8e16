// Time left on the console's windows and pending requests (no inline script: CSP is script-src 'self').
// Each <time data-countdown datetime="...Z"> shows "4 min 12 s left", then "ended"; the server's
// text (the end time in UTC) stays without JavaScript, and the title keeps the end time on hover.
"use strict";

(function () {
  const clocks = Array.from(document.querySelectorAll("time[data-countdown]"));

  function left(seconds) {
    if (seconds <= 0) return "ended";
    const h = Math.floor(seconds / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    if (h > 0) return h + " h " + m + " min left";
    if (m > 0) return m + " min " + s + " s left";
    return s + " s left";
  }

  function tick() {
    const now = Date.now();
    clocks.forEach(function (el) {
      const end = new Date(el.dateTime).getTime();
      if (isNaN(end)) return;
      el.textContent = left(Math.ceil((end - now) / 1000));
      el.classList.toggle("ended", end <= now);
    });
  }

  if (clocks.length) {
    tick();
    setInterval(tick, 1000);
  }
})();
