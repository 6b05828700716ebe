// Progressive enhancement only: every page works without it.
"use strict";
document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
});
document.addEventListener("click", function (event) {
  if (event.target.hasAttribute("data-print")) window.print();
});
document.querySelectorAll("[data-copy]").forEach(function (field) {
  if (!navigator.clipboard) return;
  var button = document.createElement("button");
  button.type = "button";
  button.textContent = "Copy";
  button.className = "small";
  button.addEventListener("click", function () {
    navigator.clipboard.writeText(field.value).then(function () { button.textContent = "Copied"; });
  });
  field.insertAdjacentElement("afterend", button);
});
