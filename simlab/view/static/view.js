// simlab view: progressive enhancement only; every page works without this script.
"use strict";

// The filter form leaves its empty fields out of the URL, so a shared link names only the filters in use.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("filters");
  if (!form) return;
  form.addEventListener("submit", () => {
    for (const field of form.querySelectorAll("input, select")) {
      if (field.name && !field.value) field.disabled = true;
    }
  });
  // back or forward to this page: the form shows this URL's filters (the browser would restore
  // what was typed before), and fields disabled by a submit come back
  window.addEventListener("pageshow", () => {
    for (const field of form.querySelectorAll("input, select")) field.disabled = false;
    form.reset();
  });
});
