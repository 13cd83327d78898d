// station-control: live updates by Server-Sent Events (no build step, no library).
"use strict";

function liveOverview() {
  const rows = document.getElementById("rows");
  if (!rows) return;
  const live = document.getElementById("live");
  const source = new EventSource("/events" + window.location.search);
  source.onmessage = (msg) => {
    const data = JSON.parse(msg.data);
    document.getElementById("counts").innerHTML = data.counts;
    rows.innerHTML = data.rows;
    document.getElementById("matching").textContent = data.matching;
    document.getElementById("shown").textContent = data.shown;
    document.body.dataset.version = data.version;
    live.className = "live on";
  };
  source.onerror = () => { live.className = "live off"; };
}

function liveStation() {
  const box = document.getElementById("station-live");
  if (!box) return;
  const id = encodeURIComponent(box.dataset.station);
  const source = new EventSource("/station/" + id + "/live");
  source.onmessage = (msg) => { box.innerHTML = JSON.parse(msg.data).html; };
}

document.addEventListener("DOMContentLoaded", () => {
  liveOverview();
  liveStation();
});
