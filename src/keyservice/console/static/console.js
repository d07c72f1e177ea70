// keyservice console: small enhancements over working HTML forms. No inline script (CSP).
(function () {
  "use strict";

  // A screen reader speaks a live region when its text changes: the same words written
  // again (a second Copy) change nothing and are not read. So the region is emptied and
  // given the words a moment later, each time.
  var statusTimer = null;
  function status(text) {
    var node = document.querySelector("[data-copy-status]");
    if (!node) { return; }
    clearTimeout(statusTimer);
    node.textContent = "";
    statusTimer = setTimeout(function () { node.textContent = text; }, 100);
  }

  function legacyCopy(input) {
    input.focus();
    input.select();
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }

  document.addEventListener("click", function (event) {
    var target = event.target.closest("[data-copy],[data-download],[data-done],[data-close]");
    if (!target) { return; }

    if (target.hasAttribute("data-copy")) {
      var input = document.getElementById(target.getAttribute("data-copy"));
      if (!input) { return; }
      var done = function () { status("Copied to the clipboard."); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, function () {
          if (legacyCopy(input)) { done(); } else { status("Select the key and copy it."); }
        });
      } else if (legacyCopy(input)) {
        done();
      } else {
        status("Select the key and copy it.");
      }
    } else if (target.hasAttribute("data-download")) {
      var source = document.getElementById(target.getAttribute("data-download"));
      if (!source) { return; }
      // Built in the page: the secret never travels in a URL or a second request.
      var blob = new Blob([source.value], { type: "application/octet-stream" });
      var url = URL.createObjectURL(blob);
      var link = document.createElement("a");
      link.href = url;
      link.download = target.getAttribute("data-filename") || "key.APIKEY";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
      status("Downloaded " + link.download + ".");
    } else if (target.hasAttribute("data-done")) {
      // Forget the secret, and take the page out of the history so Back cannot show it.
      event.preventDefault();
      document.querySelectorAll("[data-secret]").forEach(function (node) { node.value = ""; });
      window.location.replace(target.getAttribute("href"));
    } else if (target.hasAttribute("data-close")) {
      var dialog = target.closest("dialog");
      if (dialog) { dialog.close(); }
    }
  });

  // Delete buttons open a confirmation dialog; without JavaScript they open a page instead.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-confirm-delete")) { return; }
    var dialog = document.getElementById("delete-dialog");
    if (!dialog || typeof dialog.showModal !== "function") { return; }
    event.preventDefault();
    var confirmForm = dialog.querySelector("form");
    confirmForm.setAttribute("action", form.getAttribute("data-action"));
    dialog.querySelectorAll("[data-name]").forEach(function (node) {
      node.textContent = form.getAttribute("data-name");
    });
    dialog.returnFocusTo = form.querySelector("button");
    dialog.showModal();
    var cancel = dialog.querySelector("[data-close]");
    if (cancel) { cancel.focus(); }
  });

  // A form goes once: a double click would send it twice, and the browser shows the answer
  // to the second send. For a key form that is "Key already created" (the server makes one
  // key), so the secret, in the first answer, would never be seen; for a new user or device
  // "that name is taken", though the first send made it. Later sends wait for the answer.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (event.defaultPrevented || (form.getAttribute("method") || "").toLowerCase() !== "post") {
      return;  // a delete's confirmation dialog opened instead, or a search form
    }
    if (form.hasAttribute("data-sending")) {
      event.preventDefault();
      return;
    }
    form.setAttribute("data-sending", "");
    form.setAttribute("aria-busy", "true");
  });

  // Back to such a form from the bfcache: let it be sent, the server says what happened.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }
    document.querySelectorAll("form[data-sending]").forEach(function (form) {
      form.removeAttribute("data-sending");
      form.removeAttribute("aria-busy");
    });
  });

  document.addEventListener("close", function (event) {
    var dialog = event.target;
    if (dialog.returnFocusTo) { dialog.returnFocusTo.focus(); }
  }, true);

  function describeBy(node, id) {
    var ids = (node.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
    if (ids.indexOf(id) === -1) {
      ids.push(id);
      node.setAttribute("aria-describedby", ids.join(" "));
    }
  }

  // Bring the first field with an error into view and focus. A group of boxes takes no
  // focus itself: its first box does, and a screen reader then reads the group's name and
  // its description, the message. The error summary (#form-errors: messages of no one
  // field) takes the focus when no field does; else it joins the field's description, so
  // that it is read with the field. Focus reads it once: it is no live region (role=alert),
  // which would say it a second time.
  document.addEventListener("DOMContentLoaded", function () {
    var marked = document.querySelector("[aria-invalid=true]");
    var summary = document.getElementById("form-errors");
    var notice = document.getElementById("notice");
    var invalid = marked;
    if (invalid && invalid.tagName === "FIELDSET") {
      invalid = invalid.querySelector("input:not([type=hidden]):not([disabled])");
    }
    if (invalid && typeof invalid.focus === "function") {
      if (summary) { describeBy(marked, summary.id); }
      invalid.focus();
    } else if (summary) {
      summary.focus();
    } else if (notice && !document.querySelector("[autofocus]")) {
      // A notice that came with the page ("The key was deleted."), after a redirect: a
      // status present at load is not announced, focus reads it.
      notice.focus();
    }
  });
})();
