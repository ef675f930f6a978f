// The wallet's pages: passkey ceremonies (WebAuthn) for approval and enrolment. No other
// script runs on these pages; every call goes to the wallet itself with the link's tag.
"use strict";

const b64 = {
  decode(text) {
    const base = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base + "=".repeat((4 - (base.length % 4)) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)).buffer;
  },
  encode(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = "";
    for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
};

function say(text) {
  const status = document.getElementById("status");
  if (status) status.textContent = text;
}

async function call(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "omit",
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(answer.detail || answer.code || `error ${response.status}`);
  }
  return answer;
}

async function approveWithPasskey(actions) {
  const id = actions.dataset.request;
  const t = actions.dataset.t;
  say("Waiting for your passkey…");
  const started = await call(`/approve/${encodeURIComponent(id)}/passkey/options`, { t });
  const publicKey = started.options.publicKey;
  publicKey.challenge = b64.decode(publicKey.challenge);
  for (const c of publicKey.allowCredentials || []) c.id = b64.decode(c.id);
  const credential = await navigator.credentials.get({ publicKey });
  const response = credential.response;
  await call(`/approve/${encodeURIComponent(id)}/passkey`, {
    t,
    state: started.state,
    credential: {
      id: credential.id,
      rawId: b64.encode(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: b64.encode(response.authenticatorData),
        clientDataJSON: b64.encode(response.clientDataJSON),
        signature: b64.encode(response.signature),
        userHandle: response.userHandle ? b64.encode(response.userHandle) : null,
      },
      extensions: {},
    },
  });
  // The page shows the outcome as the wallet has it.
  window.location.reload();
}

async function enrollPasskey(enroll) {
  const user = enroll.dataset.user;
  const e = Number(enroll.dataset.e);
  const t = enroll.dataset.t;
  say("Follow your device's prompt…");
  const started = await call(`/enroll/${encodeURIComponent(user)}/options`, { e, t });
  const publicKey = started.options.publicKey;
  publicKey.challenge = b64.decode(publicKey.challenge);
  publicKey.user.id = b64.decode(publicKey.user.id);
  for (const c of publicKey.excludeCredentials || []) c.id = b64.decode(c.id);
  const credential = await navigator.credentials.create({ publicKey });
  const response = credential.response;
  const done = await call(`/enroll/${encodeURIComponent(user)}`, {
    e,
    t,
    state: started.state,
    credential: {
      id: credential.id,
      rawId: b64.encode(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: b64.encode(response.attestationObject),
        clientDataJSON: b64.encode(response.clientDataJSON),
        transports: response.getTransports ? response.getTransports() : [],
      },
      extensions: {},
    },
  });
  say(`Passkey added (${done.credential_id.slice(0, 12)}…). You can close this page.`);
  document.getElementById("enroll-passkey").remove();
  document.body.dataset.enrolled = "true";
}

function failed(error) {
  say(`Not done: ${error.message || error}`);
  document.body.dataset.failed = "true";
}

document.addEventListener("DOMContentLoaded", () => {
  const approve = document.getElementById("approve-passkey");
  if (approve) {
    approve.addEventListener("click", () =>
      approveWithPasskey(document.getElementById("actions")).catch(failed),
    );
  }
  const enroll = document.getElementById("enroll-passkey");
  if (enroll) {
    enroll.addEventListener("click", () =>
      enrollPasskey(document.getElementById("enroll")).catch(failed),
    );
  }
});
