document.title = "crm " + "1.0.0";
