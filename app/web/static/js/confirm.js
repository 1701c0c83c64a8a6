// Forms with data-confirm="question" ask before submitting (in place of inline onsubmit
// handlers, which the Content-Security-Policy does not run).
document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute && event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});
