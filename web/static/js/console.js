// @ts-check
/** The center console: go live, the wall of sites, moderation, chat. */

import { CAMERA_CAPTURE, HubClient, fetchRoomStatus, setRestream, setRoomMedia } from "./protocol.js";
import { initI18n, onLangChange, t } from "./i18n.js";
import { api, tokenFromLogin } from "./command-common.js";
import {
    AudioSink,
    adoptToken,
    attachTrack,
    byId,
    el,
    formatStats,
    levelOf,
    mediaAvailable,
    rememberToken,
    showState,
    takeToken,
    toast,
    tokenFromPaste,
} from "./ui.js";
import { PAGE_SIZES, filterSites, instituteCounts, pageOf, pageSizeFrom, shortName, wallSites } from "./wall.js";

/** @typedef {import("./protocol.js").ParticipantInfo} ParticipantInfo */
/** @typedef {import("./protocol.js").RemoteTrack} RemoteTrack */
/** @typedef {import("./wall.js").SiteRecord} SiteRecord */
/** @typedef {import("./wall.js").WallSite} WallSite */
/** @typedef {import("./wall.js").WallFilter} WallFilter */
/** @typedef {import("./wall.js").WallShow} WallShow */

initI18n();

const statusNode = byId("status");
const banner = byId("banner");
const wall = byId("wall");
const hands = byId("hands");
const chatLog = byId("chat-log");
const preview = /** @type {HTMLVideoElement} */ (byId("preview"));
const screenPreview = /** @type {HTMLVideoElement} */ (byId("screen-preview"));
const cameraSelect = /** @type {HTMLSelectElement} */ (byId("camera-select"));
/** The codec the camera and screen are sent in: chosen before going live (a PC that
 * encodes H.264 in hardware), kept for the next visit. */
const codecSelect = /** @type {HTMLSelectElement} */ (byId("codec-select"));
const CODEC_KEY = "practicehub.console.codec";
codecSelect.value = localStorage.getItem(CODEC_KEY) === "H264" ? "H264" : "VP8";
codecSelect.addEventListener("change", () => {
    localStorage.setItem(CODEC_KEY, codecSelect.value);
    if (client) client.videoCodec = codecSelect.value === "H264" ? "H264" : "VP8";
});
const micSelect = /** @type {HTMLSelectElement} */ (byId("mic-select"));
const goLiveButton = /** @type {HTMLButtonElement} */ (byId("golive"));
const shareButton = /** @type {HTMLButtonElement} */ (byId("share"));
const micToggle = /** @type {HTMLButtonElement} */ (byId("mic-toggle"));
const householdsButton = /** @type {HTMLButtonElement} */ (byId("households"));
const recordButton = /** @type {HTMLButtonElement} */ (byId("record"));
const audioSink = new AudioSink(byId("audio"));

/** @type {HubClient | null} */
let client = null;
let live = false;
/** @type {MediaStreamTrack | null} */
let cameraTrack = null;
/** @type {MediaStreamTrack | null} */
let micTrack = null;
/** @type {MediaStreamTrack | null} */
let screenTrack = null;
/** @type {Record<string, {rtt_ms?: number, loss?: number, bitrate_kbps?: number}>} */
let lastStats = {};
/** @type {import("./protocol.js").RoomStatus | null} */
let roomStatus = null;
let token = "";

/** Test and debugging hook: the client and the page state, no DOM. */
const exposed = {
    /** @type {HubClient | null} */
    client: null,
    get live() {
        return live;
    },
};
Object.assign(window, { practiceHub: exposed });

// ---- devices and preview ---------------------------------------------------------

/**
 * @param {HTMLSelectElement} select
 * @param {MediaDeviceKind} kind
 * @param {string | undefined} selected
 */
async function fillDevices(select, kind, selected) {
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === kind);
    select.replaceChildren(
        ...devices.map((d, i) =>
            el("option", { value: d.deviceId, text: d.label || `${kind} ${i + 1}`, selected: d.deviceId === selected }),
        ),
    );
}

/** @param {string} [deviceId] */
async function openCamera(deviceId) {
    const stream = await navigator.mediaDevices.getUserMedia({
        video: {
            width: { ideal: CAMERA_CAPTURE.width },
            height: { ideal: CAMERA_CAPTURE.height },
            frameRate: { ideal: CAMERA_CAPTURE.frameRate },
            ...(deviceId ? { deviceId: { exact: deviceId } } : {}),
        },
    });
    return stream.getVideoTracks()[0];
}

/** @param {string} [deviceId] */
async function openMicrophone(deviceId) {
    const stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) },
    });
    return stream.getAudioTracks()[0];
}

async function setupDevices() {
    if (!mediaAvailable()) {
        showBanner(t("error.insecure"));
        goLiveButton.disabled = true;
        shareButton.disabled = true;
        return;
    }
    try {
        cameraTrack = await openCamera();
        micTrack = await openMicrophone();
        attachTrack(preview, cameraTrack);
        await fillDevices(cameraSelect, "videoinput", cameraTrack.getSettings().deviceId);
        await fillDevices(micSelect, "audioinput", micTrack.getSettings().deviceId);
    } catch (e) {
        showBanner(t("error.media") + String(e));
    }
}

if (mediaAvailable()) {
    // a camera or microphone plugged in or out
    navigator.mediaDevices.addEventListener("devicechange", () => {
        void fillDevices(cameraSelect, "videoinput", cameraTrack?.getSettings().deviceId);
        void fillDevices(micSelect, "audioinput", micTrack?.getSettings().deviceId);
    });
}

cameraSelect.addEventListener("change", async () => {
    const old = cameraTrack;
    cameraTrack = await openCamera(cameraSelect.value);
    attachTrack(preview, cameraTrack);
    if (live && client) await client.publish("camera", cameraTrack);
    if (old && old !== cameraTrack) old.stop();
});

micSelect.addEventListener("change", async () => {
    const old = micTrack;
    micTrack = await openMicrophone(micSelect.value);
    if (live && client) await client.publish("microphone", micTrack);
    if (old && old !== micTrack) old.stop();
});

goLiveButton.addEventListener("click", async () => {
    if (!client) return;
    goLiveButton.disabled = true;
    try {
        if (!live) {
            if (!cameraTrack || cameraTrack.readyState === "ended") cameraTrack = await openCamera(cameraSelect.value || undefined);
            if (!micTrack || micTrack.readyState === "ended") micTrack = await openMicrophone(micSelect.value || undefined);
            attachTrack(preview, cameraTrack);
            live = true;
            // The codec is negotiated with the camera's first offer and stays with it.
            codecSelect.disabled = true;
            await client.publish("camera", cameraTrack);
            await client.publish("microphone", micTrack);
        } else {
            live = false;
            await client.unpublish("camera");
            await client.unpublish("microphone");
        }
    } catch (e) {
        showBanner(String(e));
    } finally {
        goLiveButton.disabled = false;
        renderLiveButtons();
    }
});

shareButton.addEventListener("click", async () => {
    if (!client) return;
    if (screenTrack) {
        await stopShare();
        return;
    }
    try {
        const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 15 }, audio: false });
        screenTrack = stream.getVideoTracks()[0];
        screenTrack.addEventListener("ended", () => void stopShare());
        screenPreview.hidden = false;
        attachTrack(screenPreview, screenTrack);
        await client.publish("screen", screenTrack);
    } catch (e) {
        screenTrack = null;
        toast(String(e));
    }
    renderLiveButtons();
});

async function stopShare() {
    const track = screenTrack;
    screenTrack = null;
    if (track) track.stop();
    screenPreview.hidden = true;
    attachTrack(screenPreview, null);
    if (client) await client.unpublish("screen");
    renderLiveButtons();
}

micToggle.addEventListener("click", () => {
    if (!client) return;
    client.setMuted("microphone", !client.isMuted("microphone"));
    renderLiveButtons();
});

function renderLiveButtons() {
    goLiveButton.textContent = t(live ? "console.stoplive" : "console.golive");
    goLiveButton.setAttribute("aria-pressed", String(live));
    shareButton.textContent = t(screenTrack ? "console.unshare" : "console.share");
    shareButton.setAttribute("aria-pressed", String(!!screenTrack));
    const muted = client ? client.isMuted("microphone") : false;
    micToggle.textContent = t(muted ? "station.mic.off" : "station.mic.on");
    micToggle.setAttribute("aria-pressed", String(muted));
}

// ---- the wall -----------------------------------------------------------------------

const stageWall = byId("stage-wall");
const showSelect = /** @type {HTMLSelectElement} */ (byId("wall-show"));
const pageSizeSelect = /** @type {HTMLSelectElement} */ (byId("wall-page-size"));
const prevButton = /** @type {HTMLButtonElement} */ (byId("wall-prev"));
const nextButton = /** @type {HTMLButtonElement} */ (byId("wall-next"));
const institutesNode = byId("institute-counts");
const PAGE_SIZE_KEY = "practiceHub.wallPageSize";

/** What the operator chose: the filter, the page, the page size (remembered), whom it listens to. */
const wallState = {
    /** @type {WallFilter} */
    filter: { show: "online", institute: "" },
    page: 0,
    pageSize: pageSizeFrom(localStorage.getItem(PAGE_SIZE_KEY)),
    /** @type {Set<string>} by identity, so that a site that rejoins is still listened to */
    listen: new Set(),
};
/** @type {Map<string, SiteRecord>} the tree the operator's login may see; empty without a login */
let tree = new Map();
/** @type {string[]} the sites a scheduled session expects (its audience), from the login */
let expected = [];
/** The last `view` sent: only a change is sent again. */
let sentView = "";

/** @type {Map<string, HTMLElement>} the tiles shown, by identity */
const tiles = new Map();

/** @param {string} identity */
function tileFor(identity) {
    let tile = tiles.get(identity);
    if (tile) return tile;
    tile = el("article", { class: "tile", "data-identity": identity }, [
        el("video", { playsinline: true, autoplay: true, muted: true, "data-source": "camera" }),
        el("video", { playsinline: true, autoplay: true, muted: true, "data-source": "screen", hidden: true }),
        el("div", { class: "no-video", hidden: true }),
        el("div", { class: "name" }),
        el("div", { class: "badges" }),
        el("div", { class: "meta" }),
        el("div", { class: "actions" }, [
            el("button", { type: "button", "data-action": "stage" }),
            el("button", { type: "button", "data-action": "listen" }),
            el("button", { type: "button", "data-action": "mute" }),
            el("button", { type: "button", "data-action": "remove" }),
        ]),
    ]);
    tile.addEventListener("click", onTileAction);
    tiles.set(identity, tile);
    return tile;
}

/** @param {Event} event */
function onTileAction(event) {
    const target = /** @type {HTMLElement} */ (event.target);
    const button = target.closest("button");
    const tile = target.closest("[data-identity]");
    if (!button || !tile || !client) return;
    const action = button.getAttribute("data-action") || "";
    if (action === "listen") {
        const identity = tile.getAttribute("data-identity") || "";
        if (!wallState.listen.delete(identity)) wallState.listen.add(identity);
        renderWall();
    } else {
        moderate(tile.getAttribute("data-sid") || "", action);
    }
}

/**
 * @param {string} sid
 * @param {string} action
 */
function moderate(sid, action) {
    if (!client) return;
    const p = client.participants.get(sid);
    if (!p) return;
    if (action === "stage") client.moderateStage(sid, !isOnStage(p));
    else if (action === "mute") client.moderateMute(sid, "microphone", !isMicMuted(p));
    else if (action === "lower") client.lowerHand(sid);
    else if (action === "remove") {
        if (window.confirm(t("confirm.remove", { name: p.name || p.identity }))) client.remove(sid);
    }
}

/** @param {ParticipantInfo} p */
function isOnStage(p) {
    return p.on_stage || (client ? client.stage.includes(p.sid) : false);
}

/** @param {ParticipantInfo} p */
function isMicMuted(p) {
    const mic = p.publications.find((pub) => pub.source === "microphone");
    return !!mic && mic.muted;
}

/**
 * @param {string} sid
 * @param {'camera' | 'screen'} source
 * @returns {MediaStreamTrack | null}
 */
function videoOf(sid, source) {
    if (!client) return null;
    for (const r of client.remoteTracks.values()) {
        if (r.info.participant === sid && r.info.source === source && r.track.kind === "video") return r.track;
    }
    return null;
}

/**
 * Sites on the wall: everyone but household viewers (WHEP), who are only counted.
 * @param {ParticipantInfo} p
 */
function isSite(p) {
    return p.role !== "viewer";
}

/**
 * Makes `container` hold exactly these tiles, in order; touches the DOM only when they
 * differ (a <video> moved in the DOM pauses).
 * @param {HTMLElement} container
 * @param {WallSite[]} sites
 */
function placeTiles(container, sites) {
    const wanted = sites.map((s) => tileFor(s.identity));
    const same = wanted.length === container.children.length && wanted.every((tile, i) => container.children[i] === tile);
    if (!same) container.replaceChildren(...wanted);
}

/**
 * @param {HTMLVideoElement} video
 * @param {MediaStreamTrack | null} track
 */
function showVideo(video, track) {
    attachTrack(video, track);
    video.hidden = !track && video.dataset.source === "screen";
    if (track && video.paused) video.play().catch(() => {});
}

/** @param {WallSite} site */
function renderTile(site) {
    if (!client) return;
    const tile = tileFor(site.identity);
    const p = site.sid ? client.participants.get(site.sid) : undefined;
    const label = site.name;
    if (site.sid) tile.dataset.sid = site.sid;
    else delete tile.dataset.sid;
    const speaking = !!site.sid && client.speakers.includes(site.sid);
    const muted = !!p && isMicMuted(p);
    const stalled = !!p && p.publications.some((pub) => pub.stalled);
    const listening = wallState.listen.has(site.identity);
    tile.classList.toggle("offline", !p);
    tile.classList.toggle("on-stage", site.onStage);
    tile.classList.toggle("speaking", speaking);
    const camera = /** @type {HTMLVideoElement} */ (tile.querySelector('video[data-source="camera"]'));
    const screen = /** @type {HTMLVideoElement} */ (tile.querySelector('video[data-source="screen"]'));
    showVideo(camera, site.sid ? videoOf(site.sid, "camera") : null);
    showVideo(screen, site.sid ? videoOf(site.sid, "screen") : null);
    // a site without a camera (or with it off) shows why its tile has no picture
    const cameraOn = !!p && p.publications.some((pub) => pub.source === "camera" && !pub.muted);
    camera.hidden = !cameraOn;
    const noVideo = /** @type {HTMLElement} */ (tile.querySelector(".no-video"));
    noVideo.hidden = !p || cameraOn;
    noVideo.textContent = t("wall.noCamera");
    camera.setAttribute("aria-label", label);
    /** @type {HTMLElement} */ (tile.querySelector(".name")).textContent = label;
    /** @type {HTMLElement} */ (tile.querySelector(".badges")).replaceChildren(
        ...[
            !p && el("span", { class: "badge offline", text: t("badge.offline") }),
            site.onStage && el("span", { class: "badge stage", text: t("badge.stage") }),
            site.hand && el("span", { class: "badge hand", text: t("badge.hand") }),
            muted && el("span", { class: "badge muted", text: t("badge.muted") }),
            stalled && el("span", { class: "badge stalled", text: t("badge.stalled") }),
            speaking && el("span", { class: "badge", text: t("badge.speaking") }),
            listening && !site.onStage && el("span", { class: "badge listen", text: t("badge.listening") }),
        ].filter((x) => !!x),
    );
    const stats = site.sid ? lastStats[site.sid] : undefined;
    /** @type {HTMLElement} */ (tile.querySelector(".meta")).replaceChildren(
        ...(p ? [el("span", { class: "q", "data-level": levelOf(stats) }), formatStats(stats)] : []),
    );
    /** @type {HTMLElement} */ (tile.querySelector(".actions")).hidden = !p;
    /**
     * @param {string} action
     * @param {string} key
     * @param {boolean | null} pressed  null: not a toggle
     */
    const button = (action, key, pressed) => {
        const node = /** @type {HTMLElement} */ (tile.querySelector(`[data-action="${action}"]`));
        node.textContent = t(key);
        node.setAttribute("aria-label", `${t(key)} ${label}`);
        if (pressed !== null) node.setAttribute("aria-pressed", String(pressed));
        return node;
    };
    button("stage", site.onStage ? "action.stageOff" : "action.stageOn", null);
    // the stage is heard by everyone: listening is for sites off it
    button("listen", "action.listen", listening).hidden = site.onStage;
    button("mute", muted ? "action.unmute" : "action.mute", null);
    button("remove", "action.remove", null);
}

/** The weak-link filter: a link the hub sees as fair or poor. @param {{rtt_ms?: number, loss?: number} | undefined} stats */
function isWeak(stats) {
    const level = levelOf(stats);
    return level === "fair" || level === "poor";
}

function renderWall() {
    if (!client) return;
    const c = client;
    const everyone = [...c.participants.values()];
    const participants = everyone.filter(isSite);
    const viewers = everyone.length - participants.length;
    const sites = wallSites(
        participants.map((p) => ({
            identity: p.identity,
            name: p.name || p.identity,
            sid: p.sid,
            onStage: isOnStage(p),
            hand: p.hand_raised,
            weak: isWeak(lastStats[p.sid]),
        })),
        expected,
        tree,
    );
    const stage = sites.filter((s) => s.onStage);
    const shown = pageOf(filterSites(sites, wallState.filter), wallState.pageSize, wallState.page);
    wallState.page = shown.page;
    placeTiles(stageWall, stage);
    placeTiles(wall, shown.items);
    stageWall.hidden = stage.length === 0;
    const kept = new Set([...stage, ...shown.items].map((s) => s.identity));
    for (const [identity, tile] of tiles) {
        if (!kept.has(identity)) {
            for (const v of tile.querySelectorAll("video")) v.srcObject = null;
            tile.remove();
            tiles.delete(identity);
        }
    }
    for (const site of [...stage, ...shown.items]) renderTile(site);
    wall.style.setProperty("--wall-columns", String(Math.ceil(Math.sqrt(wallState.pageSize))));
    byId("wall-page").textContent = t("wall.page", { n: shown.page + 1, of: shown.pages });
    prevButton.disabled = shown.page === 0;
    nextButton.disabled = shown.page >= shown.pages - 1;
    renderInstitutes(sites);
    byId("wall-empty").hidden = shown.items.length > 0;
    byId("site-count").textContent =
        t("console.sites", { n: participants.length }) + (viewers ? ` · ${t("console.viewers", { n: viewers })}` : "");
    renderHands();
    sendView([...stage, ...shown.items]);
}

/**
 * Each institute's count ("城关街道所 3/5"), a button that shows only its sites.
 * @param {WallSite[]} sites
 */
function renderInstitutes(sites) {
    const counts = instituteCounts(sites);
    institutesNode.hidden = counts.length === 0;
    /**
     * @param {string} code
     * @param {string} text
     */
    const chip = (code, text) =>
        el("button", {
            type: "button",
            class: "chip",
            "data-institute": code,
            "aria-pressed": String(wallState.filter.institute === code),
            text,
        });
    institutesNode.replaceChildren(
        chip("", t("wall.institute.all")),
        ...counts.map((count) =>
            chip(count.institute, `${shortName(tree.get(count.institute)?.name || count.institute)} ${count.online}/${count.total}`),
        ),
    );
}

/**
 * Tells the hub what the wall shows and whom the operator listens to, when it changed.
 * @param {WallSite[]} shown
 */
function sendView(shown) {
    if (!client || client.state !== "joined") return;
    const tileSids = shown.flatMap((s) => (s.sid ? [s.sid] : []));
    const listen = [...client.participants.values()].filter((p) => wallState.listen.has(p.identity)).map((p) => p.sid);
    const view = JSON.stringify([tileSids, listen]);
    if (view === sentView) return;
    sentView = view;
    client.setView(tileSids, listen);
}

institutesNode.addEventListener("click", (event) => {
    const chip = /** @type {HTMLElement} */ (event.target).closest("[data-institute]");
    if (!chip) return;
    wallState.filter = { ...wallState.filter, institute: chip.getAttribute("data-institute") || "" };
    wallState.page = 0;
    renderWall();
});
showSelect.addEventListener("change", () => {
    wallState.filter = { ...wallState.filter, show: /** @type {WallShow} */ (showSelect.value) };
    wallState.page = 0;
    renderWall();
});
pageSizeSelect.replaceChildren(
    ...PAGE_SIZES.map((n) => el("option", { value: n, text: String(n), selected: n === wallState.pageSize })),
);
pageSizeSelect.addEventListener("change", () => {
    wallState.pageSize = pageSizeFrom(pageSizeSelect.value);
    localStorage.setItem(PAGE_SIZE_KEY, String(wallState.pageSize));
    wallState.page = 0;
    renderWall();
});
prevButton.addEventListener("click", () => {
    wallState.page -= 1;
    renderWall();
});
nextButton.addEventListener("click", () => {
    wallState.page += 1;
    renderWall();
});

/**
 * The sites the operator's login may see and, for a scheduled session, the sites it
 * expects: the wall's institutes and its offline sites. A console opened with a bare
 * token has neither and shows the sites in the room.
 */
async function loadDirectory() {
    if (!client || tree.size > 0) return;
    const room = client.room;
    const self = client.self ? client.self.identity : "";
    try {
        /** @type {SiteRecord[]} */
        const sites = await api("/api/sites");
        tree = new Map(sites.map((s) => [s.code, s]));
        if (sessionOf(room) !== null) {
            /** @type {{expected: string[]}} */
            const report = await api(`/api/attendance/${encodeURIComponent(room)}`);
            expected = report.expected.filter((code) => code !== self);
        }
    } catch {
        return; // no login here
    }
    renderWall();
}

function renderHands() {
    if (!client) return;
    const raised = [...client.participants.values()].filter((p) => p.hand_raised);
    hands.replaceChildren(
        ...raised.map((p) =>
            el("li", { "data-sid": p.sid }, [
                el("span", { text: p.name || p.identity }),
                el("span", { class: "row" }, [
                    el("button", {
                        type: "button",
                        class: "primary",
                        "data-action": "stage",
                        text: t(isOnStage(p) ? "action.stageOff" : "action.stageOn"),
                    }),
                    el("button", { type: "button", "data-action": "lower", text: t("action.lowerHand") }),
                ]),
            ]),
        ),
    );
    byId("hands-empty").hidden = raised.length > 0;
}

/** @param {{identity: string, name: string}[]} removed */
function renderRemoved(removed) {
    byId("removed-section").hidden = removed.length === 0;
    byId("removed-list").replaceChildren(
        ...removed.map((r) =>
            el("li", { "data-identity": r.identity }, [
                el("span", { text: r.name || r.identity }),
                el("button", {
                    type: "button",
                    "data-readmit": r.identity,
                    "aria-label": `${t("removed.readmit")} ${r.name || r.identity}`,
                    text: t("removed.readmit"),
                }),
            ]),
        ),
    );
}

byId("removed-list").addEventListener("click", (event) => {
    const button = /** @type {HTMLElement} */ (event.target).closest("[data-readmit]");
    if (button && client) client.readmit(button.getAttribute("data-readmit") || "");
});

hands.addEventListener("click", (event) => {
    const target = /** @type {HTMLElement} */ (event.target);
    const button = target.closest("button");
    const item = target.closest("[data-sid]");
    if (button && item) moderate(item.getAttribute("data-sid") || "", button.getAttribute("data-action") || "");
});

/** @param {RemoteTrack[]} tracks */
function onTracks(tracks) {
    audioSink.update(tracks.filter((r) => r.track.kind === "audio").map((r) => r.track));
    renderWall();
}

// ---- room status indicators ------------------------------------------------------------

function renderIndicators() {
    /**
     * @param {string} id
     * @param {string} labelKey
     * @param {boolean | undefined} value
     */
    const show = (id, labelKey, value) => {
        const node = byId(id);
        const known = typeof value === "boolean";
        node.setAttribute("aria-disabled", String(!known));
        node.dataset.on = String(!!value);
        const state = known ? (value ? "console.status.on" : "console.status.off") : "console.status.unknown";
        node.textContent = `${t(labelKey)}：${t(state)}`;
    };
    show("ind-recording", "console.recording", roomStatus?.recording);
    /** @type {boolean | undefined} */
    let households;
    if (roomStatus && typeof roomStatus.hls_url === "string") households = true;
    else if (roomStatus && typeof roomStatus.public === "boolean") households = roomStatus.public;
    show("ind-live", "console.householdLive", households);
    householdsButton.textContent = t(households ? "console.closeHouseholds" : "console.openHouseholds");
    householdsButton.setAttribute("aria-pressed", String(!!households));
    recordButton.textContent = t(roomStatus?.recording ? "console.record.stop" : "console.record.start");
    recordButton.setAttribute("aria-pressed", String(!!roomStatus?.recording));
}

/**
 * Start or stop recording or live HLS for households through the room API.
 * @param {HTMLButtonElement} button
 * @param {'recording' | 'live'} what
 * @param {boolean} on
 */
async function toggleMedia(button, what, on) {
    if (!client || !client.room) return;
    button.disabled = true;
    try {
        const media = await setRoomMedia(client.room, token, what, on);
        onMedia(media);
    } catch (e) {
        toast(String(e));
    } finally {
        button.disabled = false;
    }
}

/** @param {import("./protocol.js").MediaStatus} media */
function onMedia(media) {
    roomStatus = { ...(roomStatus || {}), recording: media.recording, hls_url: media.hls_url || undefined };
    if (media.live) roomStatus.public = true;
    const errors = Object.entries(media.errors || {});
    const errorNode = byId("media-error");
    errorNode.hidden = errors.length === 0;
    errorNode.textContent = errors.map(([what, message]) => `${t(`console.media.${what}`)}：${message}`).join("；");
    renderRestreams(media.restreams || []);
    renderIndicators();
}

/** @param {NonNullable<import("./protocol.js").MediaStatus["restreams"]>} targets */
function renderRestreams(targets) {
    byId("restream-list").replaceChildren(
        ...targets
            .filter((target) => target.state !== "stopped")
            .map((target) =>
                el("li", { "data-target": target.target_id, "data-state": target.state }, [
                    `${target.url} · `,
                    el("b", { text: t(`restream.${target.state}`) }),
                    target.error ? ` (${target.error})` : "",
                    " ",
                    el("button", { type: "button", "data-stop": target.target_id, text: t("restream.stop") }),
                ]),
            ),
    );
}

/** @param {{url: string} | {stop: string}} what */
async function restream(what) {
    if (!client || !client.room) return;
    try {
        onMedia(await setRestream(client.room, token, what));
    } catch (e) {
        toast(String(e));
    }
}

byId("restream-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ (byId("restream-url"));
    void restream({ url: input.value.trim() });
});
byId("restream-list").addEventListener("click", (event) => {
    const target = /** @type {HTMLElement} */ (event.target).closest("[data-stop]");
    if (target) void restream({ stop: target.getAttribute("data-stop") || "" });
});

/** What the moderator asked for households; re-applied if the hub forgot it (restart). */
let householdsWanted = false;

householdsButton.addEventListener("click", () => {
    householdsWanted = !(roomStatus && typeof roomStatus.hls_url === "string");
    void toggleMedia(householdsButton, "live", householdsWanted);
});
recordButton.addEventListener("click", () => toggleMedia(recordButton, "recording", !roomStatus?.recording));

async function pollRoomStatus() {
    if (client && client.room) {
        roomStatus = await fetchRoomStatus(client.room, token);
        if (roomStatus && roomStatus.media) renderRestreams(roomStatus.media.restreams || []);
        const live = roomStatus && typeof roomStatus.hls_url === "string";
        if (householdsWanted && roomStatus && !live && client.state === "joined") {
            await toggleMedia(householdsButton, "live", true);
        }
    }
    renderIndicators();
}

// ---- roll call ------------------------------------------------------------------------------

const ANSWERS = /** @type {const} */ (["present", "late", "absent", "waiting"]);

/** @param {import("./protocol.js").RollCallStatus} status */
function renderRollcall(status) {
    const names = new Map([
        ...Object.entries(status.names || {}),
        ...[...(client ? client.participants.values() : [])].map((p) => /** @type {[string, string]} */ ([p.identity, p.name])),
    ]);
    byId("rollcall-counts").textContent = ANSWERS.map((a) => `${t(`rollcall.${a}`)} ${status.counts[a] || 0}`).join(" · ");
    const list = byId("rollcall-list");
    list.replaceChildren(
        ...Object.entries(status.entries)
            .sort(([, a], [, b]) => ANSWERS.indexOf(a.status) - ANSWERS.indexOf(b.status))
            .map(([identity, entry]) =>
                el("li", { "data-identity": identity, "data-status": entry.status }, [
                    `${names.get(identity) || identity}：`,
                    el("b", { text: t(`rollcall.${entry.status}`) }),
                ]),
            ),
    );
    byId("rollcall-stop").hidden = status.closed || Date.now() / 1000 > status.deadline;
}

byId("rollcall-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const seconds = Number(/** @type {HTMLInputElement} */ (byId("rollcall-seconds")).value) || 30;
    if (client) client.startRollcall(Math.min(600, Math.max(5, seconds)));
});
byId("rollcall-stop").addEventListener("click", () => client && client.stopRollcall());

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

// ---- ending a scheduled session ---------------------------------------------------------

const endButton = /** @type {HTMLButtonElement} */ (byId("end-session"));

/** The session a scheduled room belongs to (`s<id>-<yyyymmddHHMM>`), or null. @param {string} room */
function sessionOf(room) {
    const match = /^s(\d+)-\d{12}$/.exec(room);
    return match ? Number(match[1]) : null;
}

endButton.addEventListener("click", async () => {
    const session = sessionOf(client ? client.room : "");
    if (session === null || !window.confirm(t("console.end.confirm"))) return;
    endButton.disabled = true;
    try {
        // the operator's login (the console was opened from it) ends the session
        await api(`/api/sessions/${session}/end`, { method: "POST" });
        showBanner(t("console.ended"));
    } catch (e) {
        toast(String(e instanceof Error ? e.message : e));
        endButton.disabled = false;
    }
});

// ---- start ----------------------------------------------------------------------------------

/** @param {string} text */
function showBanner(text) {
    banner.textContent = text;
    banner.hidden = false;
}

/** @param {string} joinToken */
async function start(joinToken) {
    token = joinToken;
    byId("token-form").hidden = true;
    byId("app").hidden = false;
    client = new HubClient({ token, simulcast: true, videoCodec: codecSelect.value === "H264" ? "H264" : "VP8" });
    exposed.client = client;
    client.on("state", (state) => showState(statusNode, state));
    client.on("participants", renderWall);
    client.on("stage", renderWall);
    client.on("speakers", renderWall);
    client.on("tracks", onTracks);
    client.on("stats", (stats) => {
        lastStats = stats;
        renderWall();
    });
    client.on("chat", addChat);
    client.on("muted", renderLiveButtons);
    client.on("media", onMedia);
    client.on("rollcall_status", renderRollcall);
    client.on("removed_identities", renderRemoved);
    client.on("joined", (self) => {
        byId("chat-form").hidden = !client?.canChat;
        byId("room-name").textContent = client ? `· ${client.room}` : "";
        endButton.hidden = sessionOf(client ? client.room : "") === null;
        document.title = `${t("console.title")} · ${self.name || self.identity}`;
        renderWall();
        void loadDirectory();
        void pollRoomStatus();
    });
    client.on("error", (err) => toast(`${err.code}: ${err.message}`));
    client.on("fatal", () => showBanner(t("error.token")));
    client.on("removed", (reason) => {
        const key = `removed.${reason}`;
        showBanner(t(key) === key ? t("removed.other") : t(key));
    });
    showState(statusNode, client.state);
    const devices = setupDevices();
    try {
        await client.start();
    } catch {
        return;
    }
    await devices;
    setInterval(pollRoomStatus, 3000); // restream states change without a message
}

onLangChange(() => {
    if (client) showState(statusNode, client.state);
    renderLiveButtons();
    renderWall();
    renderIndicators();
});

renderLiveButtons();
renderIndicators();
/** The token this tab kept or a link brought; else one from the operator's login. */
async function findToken() {
    const kept = takeToken();
    if (kept) return kept;
    const room = new URLSearchParams(location.search).get("room");
    const token = room ? await tokenFromLogin(room, "console") : null;
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
