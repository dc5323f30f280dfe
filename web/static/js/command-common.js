// @ts-check
/**
 * What the dashboard and the station operator's page share: their strings in
 * both languages (the language choice itself is i18n.js's), JSON calls with the
 * CSRF header, the login form, and Server-Sent Events with reconnection.
 */

import { getLang, onLangChange, setLang } from "./i18n.js";

const zh = {
    "dash.title": "指挥调度大屏",
    "sessions.title": "站点活动",
    "lang.toggle": "English",
    "lang.toggle.label": "切换语言为英文",
    "login.title": "登录",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.failed": "登录失败：{reason}",
    "logout": "退出",
    "live.on": "实时连接",
    "live.off": "连接中断，正在重连…",
    "dash.online": "在线 {n} / {total}",
    "dash.tree": "站点树",
    "dash.filter": "筛选站点",
    "dash.onlyOnline": "只看在线",
    "dash.site": "站点",
    "dash.state": "状态",
    "dash.session": "当前活动",
    "dash.link": "网络",
    "state.online": "在线",
    "state.offline": "离线",
    "state.speaking": "正在发言",
    "link.none": "—",
    "link.text": "{rtt} ms · 丢包 {loss}% · {kbps} kbps",
    "stats.title": "统计",
    "stats.theme": "各平台活动数",
    "stats.month": "每月活动数",
    "stats.site": "各站点主办活动（前 10）",
    "stats.attendance": "各所出勤率",
    "stats.participants": "参与情况",
    "stats.siteJoins": "站点参与 {n} 站次",
    "stats.viewersN": "群众直播观看：{n}",
    "stats.replays": "点播回放：{n} 次",
    "stats.noLibrary": "点播回放：无资源库数据",
    "stats.csv": "导出 CSV",
    "stats.empty": "暂无数据",
    "dispatch.title": "下发指令",
    "dispatch.heading": "标题",
    "dispatch.text": "内容",
    "dispatch.kind": "范围",
    "dispatch.kind.everyone": "全部站点",
    "dispatch.kind.subtrees": "所及下属站",
    "dispatch.kind.sites": "指定站点",
    "dispatch.kind.regions": "街道/乡镇",
    "dispatch.codes": "编码或地区（逗号分隔）",
    "dispatch.send": "下发",
    "dispatch.sent": "已下发",
    "dispatch.read": "已读 {read} / {total}",
    "dispatch.unread": "未读：{sites}",
    "dispatch.none": "暂无指令",
    "escalations.title": "缺席预警",
    "escalations.none": "暂无预警",
    "escalations.item": "{site} 未按时进入「{title}」",
    "notices.title": "实时通知",
    "notices.none": "暂无通知",
    "notice.opening": "活动即将开始：{title}（{start}）",
    "notice.directive": "指令：{title}",
    "notice.escalation": "预警：{site} 未进入「{title}」",
    "notice.ack": "确认已读",
    "notice.acked": "已确认",
    "sessions.list": "今日及近期活动",
    "sessions.none": "近期没有活动",
    "sessions.join": "进入活动",
    "sessions.notOpen": "未开始",
    "sessions.noSite": "该账号未绑定站点。",
    "error.forbidden": "无权访问：{reason}",
    "error.generic": "出错了：{reason}",
};

/** @type {Record<keyof typeof zh, string>} */
const en = {
    "dash.title": "Command dashboard",
    "sessions.title": "Site activities",
    "lang.toggle": "中文",
    "lang.toggle.label": "Switch language to Chinese",
    "login.title": "Log in",
    "login.username": "Username",
    "login.password": "Password",
    "login.submit": "Log in",
    "login.failed": "Login failed: {reason}",
    "logout": "Log out",
    "live.on": "Live",
    "live.off": "Disconnected, reconnecting…",
    "dash.online": "Online {n} / {total}",
    "dash.tree": "Sites",
    "dash.filter": "Filter sites",
    "dash.onlyOnline": "Online only",
    "dash.site": "Site",
    "dash.state": "State",
    "dash.session": "Current activity",
    "dash.link": "Link",
    "state.online": "Online",
    "state.offline": "Offline",
    "state.speaking": "Speaking",
    "link.none": "—",
    "link.text": "{rtt} ms · loss {loss}% · {kbps} kbps",
    "stats.title": "Statistics",
    "stats.theme": "Activities per theme",
    "stats.month": "Activities per month",
    "stats.site": "Activities hosted per site (top 10)",
    "stats.attendance": "Attendance rate per institute",
    "stats.participants": "Participation",
    "stats.siteJoins": "{n} site joins",
    "stats.viewersN": "Household live viewers: {n}",
    "stats.replays": "Library replays: {n}",
    "stats.noLibrary": "Library replays: no library data",
    "stats.csv": "Export CSV",
    "stats.empty": "No data yet",
    "dispatch.title": "Dispatch a directive",
    "dispatch.heading": "Title",
    "dispatch.text": "Text",
    "dispatch.kind": "Recipients",
    "dispatch.kind.everyone": "All sites",
    "dispatch.kind.subtrees": "Institutes and their stations",
    "dispatch.kind.sites": "Listed sites",
    "dispatch.kind.regions": "Streets / townships",
    "dispatch.codes": "Codes or regions (comma-separated)",
    "dispatch.send": "Send",
    "dispatch.sent": "Sent",
    "dispatch.read": "Read {read} / {total}",
    "dispatch.unread": "Unread: {sites}",
    "dispatch.none": "No directives yet",
    "escalations.title": "Missing stations",
    "escalations.none": "No alerts",
    "escalations.item": "{site} has not joined “{title}”",
    "notices.title": "Live notices",
    "notices.none": "No notices yet",
    "notice.opening": "Starting soon: {title} ({start})",
    "notice.directive": "Directive: {title}",
    "notice.escalation": "Alert: {site} has not joined “{title}”",
    "notice.ack": "Acknowledge",
    "notice.acked": "Acknowledged",
    "sessions.list": "Today and upcoming",
    "sessions.none": "No activities soon",
    "sessions.join": "Join",
    "sessions.notOpen": "Not open yet",
    "sessions.noSite": "This account is bound to no site.",
    "error.forbidden": "Not allowed: {reason}",
    "error.generic": "Something went wrong: {reason}",
};

/** @typedef {keyof typeof zh} Key */

/**
 * @param {Key} key
 * @param {Record<string, string | number>} [params]
 */
export function tr(key, params) {
    let text = (getLang() === "en" ? en : zh)[key];
    for (const [name, value] of Object.entries(params || {})) {
        text = text.replaceAll(`{${name}}`, String(value));
    }
    return text;
}

/** Fills `data-c="key"` (text) and `data-c-label="key"` (aria-label) under `root`. */
export function translate(/** @type {ParentNode} */ root = document) {
    for (const el of root.querySelectorAll("[data-c]")) {
        el.textContent = tr(/** @type {Key} */ (el.getAttribute("data-c")));
    }
    for (const el of root.querySelectorAll("[data-c-label]")) {
        el.setAttribute("aria-label", tr(/** @type {Key} */ (el.getAttribute("data-c-label"))));
    }
}

/**
 * Translates the page, wires the language toggle (`#lang-toggle`), and calls
 * `rerender` after each switch.
 * @param {() => void} rerender
 */
export function initLanguage(rerender) {
    document.documentElement.lang = getLang() === "zh" ? "zh-CN" : "en";
    translate();
    onLangChange(() => {
        translate();
        rerender();
    });
    document.getElementById("lang-toggle")?.addEventListener("click", () => {
        setLang(getLang() === "zh" ? "en" : "zh");
    });
}

export class HttpError extends Error {
    /** @param {number} status @param {string} detail */
    constructor(status, detail) {
        super(detail);
        this.status = status;
    }
}

/** @returns {string} */
function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)hub_csrf=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : "";
}

/**
 * A JSON call with the login cookie and, for changes, the CSRF header.
 * @param {string} path
 * @param {{method?: string, body?: unknown}} [options]
 * @returns {Promise<any>}
 */
export async function api(path, options = {}) {
    const method = options.method || "GET";
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
        method,
        headers,
        credentials: "same-origin",
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    if (!response.ok) throw new HttpError(response.status, data?.detail || response.statusText);
    return data;
}

/**
 * Shows the login form (`#login`) until a login succeeds, then resolves with
 * the account. Already logged in: resolves at once.
 * @returns {Promise<{id: number, username: string, role: string, site: string | null}>}
 */
export async function ensureLogin() {
    try {
        return await api("/api/me");
    } catch (error) {
        if (!(error instanceof HttpError) || error.status !== 401) throw error;
    }
    const form = /** @type {HTMLFormElement} */ (document.getElementById("login"));
    const message = /** @type {HTMLElement} */ (document.getElementById("login-error"));
    form.hidden = false;
    /** @type {HTMLInputElement} */ (form.elements.namedItem("username")).focus();
    return new Promise((resolve) => {
        form.addEventListener("submit", async (event) => {
            event.preventDefault();
            const data = new FormData(form);
            try {
                const result = await api("/api/login", {
                    method: "POST",
                    body: { username: data.get("username"), password: data.get("password") },
                });
                form.hidden = true;
                message.hidden = true;
                resolve(result.account);
            } catch (error) {
                message.textContent = tr("login.failed", { reason: String(/** @type {Error} */ (error).message) });
                message.hidden = false;
            }
        });
    });
}

/**
 * Follows an event stream; EventSource reconnects by itself. `onState` hears
 * whether it is connected.
 * @param {string} path
 * @param {Record<string, (data: any) => void>} handlers by event name
 * @param {(live: boolean) => void} onState
 * @returns {EventSource}
 */
export function follow(path, handlers, onState) {
    const source = new EventSource(path, { withCredentials: true });
    source.onopen = () => onState(true);
    source.onerror = () => onState(false);
    for (const [name, handler] of Object.entries(handlers)) {
        source.addEventListener(name, (event) => handler(JSON.parse(/** @type {MessageEvent} */ (event).data)));
    }
    return source;
}

/** Marks the `#live` indicator. @param {boolean} live */
export function showLive(live) {
    const el = document.getElementById("live");
    if (!el) return;
    el.dataset.live = String(live);
    el.textContent = tr(live ? "live.on" : "live.off");
}

/**
 * A new element with text.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {string} [text]
 * @param {string} [className]
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
}
