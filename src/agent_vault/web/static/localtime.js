// Times in the viewer's own time zone (no inline script: CSP is script-src 'self').
// The server writes every time as <time datetime="...Z" title="... UTC" data-localtime>UTC text</time>;
// this file replaces the text with the local time and keeps the UTC time in the title (on hover).
// Without JavaScript the UTC text stays.
"use strict";

(function () {
  const TIME = { hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" };
  const DATETIME = Object.assign({ month: "short", day: "numeric" }, TIME);
  const FULL = Object.assign({ year: "numeric" }, DATETIME);
  const KINDS = { time: TIME, datetime: DATETIME, full: FULL };

  document.querySelectorAll("time[data-localtime]").forEach(function (el) {
    const at = new Date(el.dateTime);
    if (isNaN(at.getTime())) return;
    el.textContent = at.toLocaleString(undefined, KINDS[el.dataset.localtime] || TIME);
  });
})();
