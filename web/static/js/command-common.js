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
    "admin.title": "管理后台",
    "admin.who": "{user}（{role}）",
    "admin.dashboard": "指挥大屏",
    "admin.library": "资源库管理",
    "admin.tab.sessions": "活动安排",
    "admin.tab.sites": "站点",
    "admin.tab.accounts": "账号",
    "admin.tab.me": "我的账号",
    "role.center_admin": "中心管理员",
    "role.institute_operator": "所管理员",
    "role.station_operator": "站管理员",
    "kind.center": "中心",
    "kind.institute": "所",
    "kind.station": "站",
    "setup.title": "首次使用",
    "setup.text": "本县站点尚未建立。可一键载入本县站点树（1 个中心、14 个所、176 个站），或导入本县自己的站点表（CSV）。",
    "setup.seed": "载入本县站点树",
    "setup.seeded": "已载入 {added} 个站点，共 {sites} 个。",
    "sites.import": "导入站点表（CSV）",
    "sites.importButton": "导入",
    "sites.imported": "已导入 {n} 行。",
    "sites.importErrors": "导入失败：{reason}",
    "sites.export": "导出站点表（CSV）",
    "sites.add": "添加站点",
    "sites.edit": "编辑站点",
    "sites.code": "编码",
    "sites.name": "名称",
    "sites.kind": "类型",
    "sites.parent": "上级",
    "sites.region": "街道/乡镇",
    "sites.contactName": "联系人",
    "sites.contactPhone": "联系电话",
    "sites.save": "保存",
    "sites.cancel": "取消",
    "sites.delete": "删除",
    "sites.deleteConfirm": "确定删除「{name}」？",
    "sites.saved": "已保存「{name}」。",
    "sites.deleted": "已删除「{name}」。",
    "sites.none": "还没有站点。",
    "accounts.create": "新建账号",
    "accounts.username": "用户名",
    "accounts.password": "初始密码（至少 10 位）",
    "accounts.role": "角色",
    "accounts.site": "所属站点",
    "accounts.submit": "创建",
    "accounts.created": "已创建账号 {user}。",
    "accounts.list": "账号列表",
    "accounts.state": "状态",
    "accounts.enabled": "正常",
    "accounts.disabled": "已停用",
    "accounts.disable": "停用",
    "accounts.enable": "启用",
    "accounts.reset": "重置密码",
    "accounts.newPassword": "新密码",
    "accounts.resetDone": "已重置 {user} 的密码。",
    "accounts.actions": "操作",
    "me.title": "修改我的密码",
    "me.old": "当前密码",
    "me.new": "新密码（至少 10 位）",
    "me.repeat": "再次输入新密码",
    "me.submit": "修改密码",
    "me.mismatch": "两次输入的新密码不一致。",
    "me.done": "密码已修改。",
    "session.new": "新建活动",
    "session.edit": "编辑活动",
    "session.title": "标题",
    "session.theme": "平台",
    "session.host": "主办站点",
    "session.audience": "参加范围",
    "session.audience.everyone": "全体站点",
    "session.audience.subtrees": "所及其下属站",
    "session.audience.sites": "指定站点",
    "session.pick": "选择站点",
    "session.pickFilter": "筛选",
    "session.start": "开始时间",
    "session.end": "结束时间",
    "session.repeat": "重复",
    "session.repeat.none": "不重复",
    "session.repeat.daily": "每天",
    "session.repeat.weekly": "每周",
    "session.weekdays": "星期",
    "session.until": "重复至（含）",
    "session.record": "录制",
    "session.publish": "录制后送入资源库",
    "session.live": "向群众直播",
    "session.layout": "录制版式",
    "session.layout.lecturer": "主讲人（台上屏幕共享时为屏幕）",
    "session.layout.composite": "主讲人与屏幕/上台站点合成",
    "session.restream": "转推地址（每行一个 rtmp://）",
    "session.save": "保存",
    "session.cancelEdit": "取消",
    "session.saved": "已保存「{title}」。",
    "session.list": "活动列表",
    "session.none": "还没有安排活动。",
    "session.console": "打开控制台",
    "session.endNow": "立即结束",
    "session.endConfirm": "确定立即结束「{title}」？录制将停止并送入资源库。",
    "session.ended": "「{title}」已结束。",
    "session.editButton": "编辑",
    "session.attendance": "出勤",
    "session.cancel": "取消活动",
    "session.cancelConfirm": "确定取消「{title}」？",
    "session.cancelled": "已取消",
    "session.badge.record": "录制",
    "session.badge.live": "群众直播",
    "session.badge.publish": "入库",
    "session.badge.restream": "转推",
    "session.weekday.0": "一",
    "session.weekday.1": "二",
    "session.weekday.2": "三",
    "session.weekday.3": "四",
    "session.weekday.4": "五",
    "session.weekday.5": "六",
    "session.weekday.6": "日",
    "adhoc.title": "临时会议",
    "adhoc.hint": "不排期的会议：输入房间名（字母、数字、-），打开控制台，再为站点生成入会链接。",
    "adhoc.room": "房间名",
    "adhoc.open": "打开控制台",
    "adhoc.invite": "生成站点入会链接",
    "adhoc.site": "站点",
    "adhoc.link": "入会链接（发给该站点）",
    "attendance.title": "出勤报告",
    "attendance.occurrence": "场次",
    "attendance.expected": "应到 {n}",
    "attendance.joined": "实到 {n}",
    "attendance.absent": "缺席 {n}",
    "attendance.site": "站点",
    "attendance.status": "出勤",
    "attendance.firstJoin": "首次进入",
    "attendance.minutes": "在线（分钟）",
    "attendance.rollcall": "点名 {n}",
    "attendance.present": "已到",
    "attendance.absentMark": "缺席",
    "attendance.here": "在线",
    "attendance.csv": "导出 CSV",
    "attendance.none": "暂无场次",
    "rollcall.present": "应答",
    "rollcall.late": "迟到",
    "rollcall.absent": "未应答",
    "escalations.unread": "{site} 未在限期内阅读指令「{title}」",
    "dispatch.readWithin": "须在（分钟）内确认，逾期预警",
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
    "admin.title": "Administration",
    "admin.who": "{user} ({role})",
    "admin.dashboard": "Command dashboard",
    "admin.library": "Library administration",
    "admin.tab.sessions": "Activities",
    "admin.tab.sites": "Sites",
    "admin.tab.accounts": "Accounts",
    "admin.tab.me": "My account",
    "role.center_admin": "Center administrator",
    "role.institute_operator": "Institute operator",
    "role.station_operator": "Station operator",
    "kind.center": "Center",
    "kind.institute": "Institute",
    "kind.station": "Station",
    "setup.title": "First use",
    "setup.text": "The county's sites are not set up yet. Load the county's tree in one click (1 center, 14 institutes, 176 stations), or import your own site table (CSV).",
    "setup.seed": "Load the county's tree",
    "setup.seeded": "{added} sites added, {sites} in all.",
    "sites.import": "Import a site table (CSV)",
    "sites.importButton": "Import",
    "sites.imported": "{n} rows imported.",
    "sites.importErrors": "Import failed: {reason}",
    "sites.export": "Export the site table (CSV)",
    "sites.add": "Add a site",
    "sites.edit": "Edit site",
    "sites.code": "Code",
    "sites.name": "Name",
    "sites.kind": "Kind",
    "sites.parent": "Parent",
    "sites.region": "Street / township",
    "sites.contactName": "Contact",
    "sites.contactPhone": "Phone",
    "sites.save": "Save",
    "sites.cancel": "Cancel",
    "sites.delete": "Delete",
    "sites.deleteConfirm": "Delete “{name}”?",
    "sites.saved": "Saved “{name}”.",
    "sites.deleted": "Deleted “{name}”.",
    "sites.none": "No sites yet.",
    "accounts.create": "New account",
    "accounts.username": "Username",
    "accounts.password": "Initial password (10+ characters)",
    "accounts.role": "Role",
    "accounts.site": "Site",
    "accounts.submit": "Create",
    "accounts.created": "Account {user} created.",
    "accounts.list": "Accounts",
    "accounts.state": "State",
    "accounts.enabled": "Active",
    "accounts.disabled": "Disabled",
    "accounts.disable": "Disable",
    "accounts.enable": "Enable",
    "accounts.reset": "Reset password",
    "accounts.newPassword": "New password",
    "accounts.resetDone": "Password of {user} reset.",
    "accounts.actions": "Actions",
    "me.title": "Change my password",
    "me.old": "Current password",
    "me.new": "New password (10+ characters)",
    "me.repeat": "New password again",
    "me.submit": "Change password",
    "me.mismatch": "The two new passwords differ.",
    "me.done": "Password changed.",
    "session.new": "New activity",
    "session.edit": "Edit activity",
    "session.title": "Title",
    "session.theme": "Theme",
    "session.host": "Host site",
    "session.audience": "Audience",
    "session.audience.everyone": "All sites",
    "session.audience.subtrees": "Institutes and their stations",
    "session.audience.sites": "Listed sites",
    "session.pick": "Pick sites",
    "session.pickFilter": "Filter",
    "session.start": "Start",
    "session.end": "End",
    "session.repeat": "Repeat",
    "session.repeat.none": "Once",
    "session.repeat.daily": "Daily",
    "session.repeat.weekly": "Weekly",
    "session.weekdays": "Weekdays",
    "session.until": "Repeat until (inclusive)",
    "session.record": "Record",
    "session.publish": "Put the recording in the library",
    "session.live": "Live for households",
    "session.layout": "Recording layout",
    "session.layout.lecturer": "The lecturer (the screen while one on stage shares it)",
    "session.layout.composite": "Lecturer beside the screen / stations on stage",
    "session.restream": "Restream to (one rtmp:// per line)",
    "session.save": "Save",
    "session.cancelEdit": "Cancel",
    "session.saved": "Saved “{title}”.",
    "session.list": "Activities",
    "session.none": "No activities scheduled yet.",
    "session.console": "Open console",
    "session.endNow": "End now",
    "session.endConfirm": "End “{title}” now? Recording stops and goes to the library.",
    "session.ended": "“{title}” has ended.",
    "session.editButton": "Edit",
    "session.attendance": "Attendance",
    "session.cancel": "Cancel activity",
    "session.cancelConfirm": "Cancel “{title}”?",
    "session.cancelled": "Cancelled",
    "session.badge.record": "Recorded",
    "session.badge.live": "Live for households",
    "session.badge.publish": "To library",
    "session.badge.restream": "Restreamed",
    "session.weekday.0": "Mon",
    "session.weekday.1": "Tue",
    "session.weekday.2": "Wed",
    "session.weekday.3": "Thu",
    "session.weekday.4": "Fri",
    "session.weekday.5": "Sat",
    "session.weekday.6": "Sun",
    "adhoc.title": "Ad-hoc meeting",
    "adhoc.hint": "A meeting with no schedule: name a room (letters, digits, -), open its console, then make join links for sites.",
    "adhoc.room": "Room name",
    "adhoc.open": "Open console",
    "adhoc.invite": "Make a site's join link",
    "adhoc.site": "Site",
    "adhoc.link": "Join link (send it to that site)",
    "attendance.title": "Attendance report",
    "attendance.occurrence": "Occurrence",
    "attendance.expected": "Expected {n}",
    "attendance.joined": "Joined {n}",
    "attendance.absent": "Absent {n}",
    "attendance.site": "Site",
    "attendance.status": "Attendance",
    "attendance.firstJoin": "First joined",
    "attendance.minutes": "Online (minutes)",
    "attendance.rollcall": "Roll call {n}",
    "attendance.present": "Joined",
    "attendance.absentMark": "Absent",
    "attendance.here": "Online",
    "attendance.csv": "Export CSV",
    "attendance.none": "No occurrences",
    "rollcall.present": "Answered",
    "rollcall.late": "Late",
    "rollcall.absent": "No answer",
    "escalations.unread": "{site} left the directive “{title}” unread past its time",
    "dispatch.readWithin": "Must be read within (minutes), else an alert",
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
 * A join token for `room` from the operator's login, for a page opened without one (a
 * bookmark, a new tab): a session's room from its one-click join or console, an ad-hoc
 * room from the center's console. Null when the login gives none for that room.
 * @param {string} room
 * @param {'join' | 'console'} what
 * @returns {Promise<string | null>}
 */
export async function tokenFromLogin(room, what) {
    const session = /^s(\d+)-\d{12}$/.exec(room);
    const path = session
        ? `/api/sessions/${session[1]}/${what}`
        : what === "console"
          ? `/api/rooms/${encodeURIComponent(room)}/console`
          : null;
    if (!path) return null;
    try {
        const grant = await api(path, { method: "POST" });
        return grant.room === room ? grant.token : null;
    } catch {
        return null;
    }
}

/**
 * A multipart upload (a file) with the login cookie and the CSRF header.
 * @param {string} path
 * @param {FormData} form
 * @returns {Promise<any>}
 */
export async function upload(path, form) {
    const response = await fetch(path, {
        method: "POST",
        headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
        credentials: "same-origin",
        body: form,
    });
    const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    if (!response.ok) {
        const rows = Array.isArray(data?.errors) ? data.errors.map((/** @type {any} */ e) => `${e.row}: ${e.message}`) : [];
        throw new HttpError(response.status, [data?.detail || response.statusText, ...rows].join("; "));
    }
    return data;
}

/**
 * Shows the login form (`#login`) until a login succeeds, then resolves with
 * the account. Already logged in: resolves at once.
 * @returns {Promise<{id: number, username: string, role: string, site: string | null, disabled: boolean}>}
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
