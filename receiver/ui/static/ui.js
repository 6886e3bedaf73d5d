// kling-hooks dashboard: live updates. The pages work without this script; with it, an open
// page listens to /ui/events (Server-Sent Events, sent when a callback or a delivery commits)
// and swaps its regions marked data-live for those of a fresh copy of the same page.
"use strict";
(function () {
  const eventsUrl = document.body.dataset.events;
  const main = document.getElementById("main");
  if (!eventsUrl || !main || !window.EventSource) {
    return;
  }
  const onlyTask = main.dataset.task; // a task page follows its own task only
  const status = document.getElementById("live-state");
  let timer = null;
  let busy = false;
  let again = false;

  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const answer = await fetch(window.location.href, { credentials: "same-origin" });
      if (answer.ok) {
        const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
        for (const region of document.querySelectorAll("[data-live]")) {
          const next = fresh.getElementById(region.id);
          if (next && next.innerHTML !== region.innerHTML) {
            region.innerHTML = next.innerHTML;
          }
        }
        say("Live: updated " + new Date().toISOString().slice(11, 19) + "Z");
      }
    } catch (_error) {
      say("Live updates paused");
    }
    busy = false;
    if (again) {
      again = false;
      refresh();
    }
  }

  const source = new EventSource(eventsUrl);
  source.addEventListener("open", function () {
    say("Live");
  });
  source.addEventListener("change", function (event) {
    const ids = JSON.parse(event.data).task_ids;
    if (onlyTask && !ids.includes(onlyTask) && !ids.includes("*")) {
      return;
    }
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, 100);
  });
  window.addEventListener("pagehide", function () {
    source.close();
  });
})();
