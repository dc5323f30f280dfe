// @ts-check
/** The station client: the stage large, hand, mic/camera, audio-only, recovery. */

import { CAMERA_CAPTURE, HubClient } from "./protocol.js";
import { initI18n, onLangChange, t } from "./i18n.js";
import { tokenFromLogin } from "./command-common.js";
import {
    AudioSink,
    adoptToken,
    attachTrack,
    byId,
    el,
    mediaAvailable,
    rememberToken,
    showOnAir,
    showState,
    takeToken,
    toast,
    tokenFromPaste,
} from "./ui.js";

/** @typedef {import("./protocol.js").RemoteTrack} RemoteTrack */
/** @typedef {import("./protocol.js").ParticipantInfo} ParticipantInfo */

initI18n();

const statusNode = byId("status");
const banner = byId("banner");
const stageVideo = /** @type {HTMLVideoElement} */ (byId("stage-video"));
const stageFigure = byId("stage-main-figure");
const stagePlaceholder = byId("stage-placeholder");
const stageCaption = byId("stage-caption");
const stageStrip = byId("stage-strip");
const selfVideo = /** @type {HTMLVideoElement} */ (byId("self-video"));
const handButton = /** @type {HTMLButtonElement} */ (byId("hand"));
const micButton = /** @type {HTMLButtonElement} */ (byId("mic"));
const camButton = /** @type {HTMLButtonElement} */ (byId("cam"));
const audioOnlyButton = /** @type {HTMLButtonElement} */ (byId("audio-only"));
const videoCapSelect = /** @type {HTMLSelectElement} */ (byId("video-cap"));
const chatLog = byId("chat-log");
const audioSink = new AudioSink(byId("audio"));
const enableSound = /** @type {HTMLButtonElement} */ (byId("enable-sound"));
// Without a camera/microphone grant (e.g. a plain-http intranet address) browsers
// refuse to play sound until the user clicks once.
audioSink.onblocked = (/** @type {boolean} */ blocked) => {
    enableSound.hidden = !blocked;
};
enableSound.addEventListener("click", () => audioSink.resume());

/** @type {HubClient | null} */
let client = null;
let audioOnly = false;
let handRaised = false;

/** Test and debugging hook. */
const exposed = {
    /** @type {HubClient | null} */
    client: null,
    get audioOnly() {
        return audioOnly;
    },
};
Object.assign(window, { practiceHub: exposed });

/** @param {string} text */
function showBanner(text) {
    banner.textContent = text;
    banner.hidden = false;
}

async function openCamera() {
    const stream = await navigator.mediaDevices.getUserMedia({
        video: {
            width: { ideal: CAMERA_CAPTURE.width },
            height: { ideal: CAMERA_CAPTURE.height },
            frameRate: { ideal: CAMERA_CAPTURE.frameRate },
        },
    });
    return stream.getVideoTracks()[0];
}

async function openMicrophone() {
    const stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    return stream.getAudioTracks()[0];
}

// ---- the stage ------------------------------------------------------------------------

/**
 * Who is on stage and what of theirs we receive: the screen first, then the
 * center's camera, then the stations called on.
 * @returns {{track: MediaStreamTrack, name: string, sid: string, source: string}[]}
 */
function stageVideos() {
    if (!client) return [];
    const c = client;
    /** @type {{track: MediaStreamTrack, name: string, sid: string, source: string, rank: number}[]} */
    const list = [];
    for (const r of c.remoteTracks.values()) {
        if (r.track.kind !== "video") continue;
        const p = c.participants.get(r.info.participant);
        const rank = r.info.source === "screen" ? 0 : p && p.can_moderate ? 1 : 2;
        list.push({ track: r.track, name: p ? p.name || p.identity : "", sid: r.info.participant, source: r.info.source, rank });
    }
    list.sort((a, b) => a.rank - b.rank);
    return list;
}

/** @type {Map<string, HTMLElement>} strip figures by track id */
const stripFigures = new Map();

function renderStage() {
    const videos = audioOnly ? [] : stageVideos();
    const main = videos[0];
    stageFigure.hidden = !main;
    stagePlaceholder.hidden = !!main;
    attachTrack(stageVideo, main ? main.track : null);
    stageVideo.dataset.sid = main ? main.sid : "";
    stageCaption.textContent = main ? main.name : "";
    const rest = videos.slice(1);
    const wanted = new Set(rest.map((v) => v.track.id));
    for (const [id, figure] of stripFigures) {
        if (!wanted.has(id)) {
            const video = figure.querySelector("video");
            if (video) video.srcObject = null;
            figure.remove();
            stripFigures.delete(id);
        }
    }
    for (const v of rest) {
        let figure = stripFigures.get(v.track.id);
        if (!figure) {
            figure = el("figure", {}, [
                el("video", { playsinline: true, autoplay: true, muted: true }),
                el("figcaption"),
            ]);
            stageStrip.append(figure);
            stripFigures.set(v.track.id, figure);
        }
        figure.classList.toggle("speaking", !!client && client.speakers.includes(v.sid));
        const video = /** @type {HTMLVideoElement} */ (figure.querySelector("video"));
        attachTrack(video, v.track);
        video.dataset.sid = v.sid;
        video.setAttribute("aria-label", v.name);
        /** @type {HTMLElement} */ (figure.querySelector("figcaption")).textContent = v.name;
    }
    const self = client ? client.self : null;
    byId("stage-notice").hidden = !(self && client && client.stage.includes(self.sid));
}

/** @param {RemoteTrack[]} tracks */
function onTracks(tracks) {
    audioSink.update(tracks.filter((r) => r.track.kind === "audio").map((r) => r.track));
    renderStage();
}

// ---- controls ---------------------------------------------------------------------------

function renderControls() {
    const c = client;
    const micMuted = c ? c.isMuted("microphone") : false;
    const camMuted = c ? c.isMuted("camera") : false;
    const micLocked = c ? c.isLocked("microphone") : false;
    const camLocked = c ? c.isLocked("camera") : false;
    micButton.textContent = t(micMuted ? "station.mic.off" : "station.mic.on");
    micButton.setAttribute("aria-pressed", String(micMuted));
    micButton.disabled = micLocked;
    micButton.dataset.muted = String(micMuted);
    micButton.dataset.locked = String(micLocked);
    camButton.textContent = t(camMuted ? "station.cam.off" : "station.cam.on");
    camButton.setAttribute("aria-pressed", String(camMuted));
    camButton.disabled = camLocked || audioOnly;
    camButton.dataset.muted = String(camMuted);
    camButton.dataset.locked = String(camLocked);
    byId("mute-lock").hidden = !(micLocked || camLocked);
    const self = c ? c.self : null;
    handRaised = self ? self.hand_raised : handRaised;
    handButton.textContent = t(handRaised ? "station.lowerHand" : "station.raiseHand");
    handButton.setAttribute("aria-pressed", String(handRaised));
    audioOnlyButton.textContent = t(audioOnly ? "station.audioOnly.on" : "station.audioOnly");
    audioOnlyButton.setAttribute("aria-pressed", String(audioOnly));
}

micButton.addEventListener("click", () => {
    if (!client) return;
    client.setMuted("microphone", !client.isMuted("microphone"));
    audioSink.resume();
    renderControls();
});

camButton.addEventListener("click", () => {
    if (!client) return;
    client.setMuted("camera", !client.isMuted("camera"));
    renderControls();
});

handButton.addEventListener("click", () => {
    if (!client) return;
    handRaised = !handRaised;
    client.raiseHand(handRaised);
    audioSink.resume();
    renderControls();
});

/** The station's own cap on the lecturer's picture (the hub's simulcast layers). */
videoCapSelect.addEventListener("change", () => {
    if (!client) return;
    const cap = videoCapSelect.value;
    if (cap === "low" || cap === "mid" || cap === "high" || cap === "auto") client.setVideoCap(cap);
});

/**
 * Audio-only mode for weak links: (1) the hub stops sending us any video, which
 * frees the downlink for sound, (2) we stop publishing our camera, which frees the
 * uplink, and (3) the page shows no video.
 */
audioOnlyButton.addEventListener("click", async () => {
    if (!client) return;
    audioOnly = !audioOnly;
    client.setAudioOnly(audioOnly);
    renderControls();
    renderStage();
    if (audioOnly) {
        const camera = client.localTracks.get("camera");
        await client.unpublish("camera");
        if (camera) camera.stop();
        attachTrack(selfVideo, null);
    } else {
        try {
            const camera = await openCamera();
            attachTrack(selfVideo, camera);
            await client.publish("camera", camera);
        } catch (e) {
            toast(t("error.media") + String(e));
        }
    }
    renderControls();
});

/**
 * What the hub paused because nobody receives it: the camera stays open (the preview
 * runs) and the microphone too; only their upload waits for a viewer or a listener.
 */
function renderUplink() {
    byId("uplink-paused").hidden = !client || client.quality !== "paused";
    byId("mic-paused").hidden = !client || client.microphone !== "paused";
}

// ---- link quality ---------------------------------------------------------------------------

async function updateQuality() {
    if (!client) return;
    const stats = await client.linkStats();
    const dot = byId("quality-dot");
    dot.dataset.level = stats.level;
    const parts = [`${t("quality.title")}：${t(`quality.${stats.level}`)}`];
    if (stats.rttMs !== null) parts.push(t("stats.rtt", { v: Math.round(stats.rttMs) }));
    if (stats.loss !== null) parts.push(t("stats.loss", { v: (stats.loss * 100).toFixed(1) }));
    byId("quality-text").textContent = parts.join(" · ");
}

// ---- chat ---------------------------------------------------------------------------------

/** @param {{name: string, text: string, at: number}} message */
function addChat(message) {
    const time = new Date(message.at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    chatLog.append(el("p", {}, [el("b", { text: `${message.name} ` }), `${time} `, message.text]));
    chatLog.scrollTop = chatLog.scrollHeight;
}

byId("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ (byId("chat-input"));
    if (client && client.sendChat(input.value)) input.value = "";
});

// ---- roll call ------------------------------------------------------------------------------

/** The open roll call this station has not answered yet. */
let rollcallId = "";

/** @param {{id: string, deadline: number}} call */
function onRollcall(call) {
    rollcallId = call.id;
    const answer = /** @type {HTMLButtonElement} */ (byId("rollcall-answer"));
    answer.disabled = false;
    byId("rollcall-text").textContent = t("rollcall.prompt");
    byId("rollcall").hidden = false;
    answer.focus();
}

byId("rollcall-answer").addEventListener("click", () => {
    if (!client || !rollcallId) return;
    client.answerRollcall(rollcallId);
    rollcallId = "";
    /** @type {HTMLButtonElement} */ (byId("rollcall-answer")).disabled = true;
    byId("rollcall-text").textContent = t("rollcall.answered");
});

// ---- start -----------------------------------------------------------------------------------

/** @param {string} token */
async function start(token) {
    byId("token-form").hidden = true;
    byId("app").hidden = false;
    const c = new HubClient({ token });
    client = c;
    exposed.client = c;
    c.on("state", (state) => {
        showState(statusNode, state);
        if (state !== "joined") byId("quality-dot").dataset.level = "down";
    });
    c.on("participants", () => {
        renderStage();
        renderControls();
    });
    c.on("stage", renderStage);
    c.on("speakers", renderStage);
    c.on("tracks", onTracks);
    c.on("muted", (m) => {
        renderControls();
        if (m.by_moderator && m.muted) toast(t("station.lockedByModerator"));
    });
    c.on("quality", () => {
        renderUplink();
        renderStage();
    });
    c.on("chat", addChat);
    c.on("rollcall", onRollcall);
    c.on("joined", (self) => {
        byId("chat-form").hidden = !c.canChat;
        byId("self-name").textContent = `· ${self.name || self.identity}`;
        document.title = `${self.name || self.identity} · ${t("station.title")}`;
        renderControls();
        renderUplink();
    });
    c.on("media", showOnAir);
    c.on("error", (err) => toast(`${err.code}: ${err.message}`));
    c.on("fatal", (err) => showBanner(t(err.code === "removed" ? "removed.removed_by_moderator" : "error.token")));
    c.on("removed", (reason) => {
        const key = `removed.${reason}`;
        showBanner(t(key) === key ? t("removed.other") : t(key));
    });
    showState(statusNode, c.state);
    renderControls();

    if (!mediaAvailable()) {
        showBanner(t("error.insecure"));
    } else {
        // Tracks set before the join are published as soon as the hub accepts it.
        try {
            const camera = await openCamera();
            attachTrack(selfVideo, camera);
            await c.publish("camera", camera);
        } catch (e) {
            toast(t("error.media") + String(e));
        }
        try {
            await c.publish("microphone", await openMicrophone());
        } catch (e) {
            toast(t("error.media") + String(e));
        }
    }
    try {
        await c.start();
    } catch {
        return;
    }
    setInterval(updateQuality, 2000);
}

onLangChange(() => {
    if (client) showState(statusNode, client.state);
    renderControls();
    renderStage();
    void updateQuality();
});

/** The token this tab kept or a link brought; else one from the operator's login. */
async function findToken() {
    const kept = takeToken();
    if (kept) return kept;
    const room = new URLSearchParams(location.search).get("room");
    const token = room ? await tokenFromLogin(room, "join") : null;
    if (room && token) rememberToken(room, token);
    return token || "";
}

const initialToken = await findToken();
if (initialToken) {
    void start(initialToken);
} else {
    const form = /** @type {HTMLFormElement} */ (byId("token-form"));
    form.hidden = false;
    form.addEventListener("submit", (event) => {
        event.preventDefault();
        const value = tokenFromPaste(/** @type {HTMLTextAreaElement} */ (byId("token-input")).value);
        if (!value) return;
        // kept for this tab, so that a reload rejoins; the address names the room only
        void start(adoptToken(value));
    });
}
