// @ts-check
import { initI18n } from "./i18n.js";

initI18n();
const form = /** @type {HTMLFormElement} */ (document.getElementById("watch-form"));
const input = /** @type {HTMLInputElement} */ (document.getElementById("watch-room"));
form.addEventListener("submit", (event) => {
    event.preventDefault();
    const room = input.value.trim();
    if (room) location.href = `/watch/${encodeURIComponent(room)}`;
});
