// Passkey buttons on the approval, enrolment and sign-in pages (no inline script: CSP is script-src 'self').
// A button with data-passkey asks its data-options-url (a same-origin POST carrying the form's
// synchronizer token) for WebAuthn options, runs the ceremony, puts cred.toJSON() in the form's
// hidden field and submits the form. The server checks everything; this file only carries data.
"use strict";

(function () {
  function fail(form, message) {
    const box = form.querySelector("[data-passkey-error]");
    if (box) {
      box.textContent = message;
      box.hidden = false;
    }
  }

  async function fetchOptions(url, form) {
    const body = new URLSearchParams();
    body.set("csrf", form.elements.csrf.value);
    if (form.elements.token) body.set("token", form.elements.token.value);
    const response = await fetch(url, { method: "POST", body: body, credentials: "same-origin" });
    if (!response.ok) throw new Error("This page is out of date or the request is no longer pending. Reload it.");
    return response.json();
  }

  async function assertion(options) {
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options);
    const credential = await navigator.credentials.get({ publicKey: publicKey });
    return JSON.stringify(credential.toJSON());
  }

  async function creation(options) {
    const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options);
    const credential = await navigator.credentials.create({ publicKey: publicKey });
    return JSON.stringify(credential.toJSON());
  }

  function typedCode(form) {
    return form.elements.code && form.elements.code.value.trim() !== "";
  }

  async function run(button) {
    const form = button.form;
    if (!window.PublicKeyCredential || !PublicKeyCredential.parseRequestOptionsFromJSON) {
      fail(form, "This browser cannot use passkeys here. Use a code instead, or a current browser.");
      return;
    }
    button.disabled = true;
    try {
      const options = await fetchOptions(button.dataset.optionsUrl, form);
      if (options.get && !typedCode(form)) form.elements.assertion.value = await assertion(options.get);
      if (options.create) form.elements.credential.value = await creation(options.create);
      form.submit();
    } catch (err) {
      fail(form, err && err.name === "NotAllowedError" ? "The passkey prompt was cancelled or refused." : String(err.message || err));
      button.disabled = false;
    }
  }

  document.querySelectorAll("button[data-passkey]").forEach(function (button) {
    button.addEventListener("click", function () { run(button); });
  });
})();
