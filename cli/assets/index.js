/* Landing page: a queue stub for window.ChatBot (widget.js loads async) and the e-mail form. */
(function () {
  "use strict";

  if (!window.ChatBot) {
    var stub = { q: [] };
    ["setEmail", "open", "close", "toggle"].forEach(function (name) {
      stub[name] = function () {
        stub.q.push([name].concat(Array.prototype.slice.call(arguments)));
      };
    });
    window.ChatBot = stub;
  }

  var form = document.getElementById("email-form");
  var input = document.getElementById("email-input");
  var result = document.getElementById("email-result");

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var email = input.value.trim();
    if (!email) return;
    window.ChatBot.setEmail(email);
    result.textContent = "E-mail set to " + email + ". The widget passes it on to the chat.";
  });

  document.getElementById("open-chat").addEventListener("click", function () {
    window.ChatBot.open();
  });
})();
