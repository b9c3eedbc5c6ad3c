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
  // restored from the back-forward cache: fields disabled by the submit must come back
  window.addEventListener("pageshow", () => {
    for (const field of form.querySelectorAll("input, select")) field.disabled = false;
  });
});
