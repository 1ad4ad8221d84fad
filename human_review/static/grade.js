// Keyboard grading: 1-9 set the focused criterion, Tab/arrows move, Enter submits, S skips, ? help.
// Also renews the lease while the page is open. No framework, no build step.
(function () {
  const form = document.getElementById("grade-form");
  if (!form) return;
  const groups = Array.from(form.querySelectorAll("fieldset.criterion"));
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let current = 0;

  function focusGroup(i) {
    current = Math.max(0, Math.min(groups.length - 1, i));
    groups.forEach((g, j) => g.classList.toggle("focused", j === current));
    groups[current].scrollIntoView({ block: "nearest" });
  }
  function typing(el) {
    return el && (el.tagName === "TEXTAREA" || (el.tagName === "INPUT" && el.type === "text"));
  }
  function firstUngraded() {
    const i = groups.findIndex((g) => !g.querySelector("input:checked"));
    return i === -1 ? groups.length - 1 : i;
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey && e.key === "Enter") { form.requestSubmit(document.getElementById("submit")); return; }
    if (typing(document.activeElement) || e.altKey || e.metaKey || e.ctrlKey) return;
    const radios = groups.length ? groups[current].querySelectorAll("input[type=radio]") : [];
    if (/^[1-9]$/.test(e.key)) {
      // Pairwise: 1..4 pick the n-th option; rubric: the key is the level itself.
      const pick = Array.from(radios).find((r) => r.value === e.key) || radios[Number(e.key) - 1];
      if (pick) {
        pick.checked = true;
        e.preventDefault();
        if (current < groups.length - 1) focusGroup(current + 1);
      }
    } else if (e.key === "Tab" || e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      focusGroup(current + ((e.key === "ArrowUp" || (e.key === "Tab" && e.shiftKey)) ? -1 : 1));
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (form.reportValidity()) form.requestSubmit(document.getElementById("submit"));
      else focusGroup(firstUngraded());
    } else if (e.key === "s" || e.key === "S") {
      e.preventDefault();
      form.requestSubmit(document.getElementById("skip"));
    } else if (e.key === "?") {
      e.preventDefault();
      const help = document.getElementById("help");
      help.hidden = !help.hidden;
    }
  });
  // A second Enter or double click must not post twice (the server is idempotent anyway).
  form.addEventListener("submit", () => setTimeout(() => form.querySelectorAll("button").forEach((b) => { b.disabled = true; }), 0));

  const script = document.currentScript;
  const renewMs = Number(script.dataset.renewMs);
  if (renewMs > 0) {
    setInterval(() => fetch(script.dataset.renewUrl, { method: "POST", headers: { "X-CSRF-Token": csrf } }), renewMs);
  }
  if (groups.length) focusGroup(0);
})();
